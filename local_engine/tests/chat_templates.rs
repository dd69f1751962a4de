//! The real chat templates of the families we serve (Qwen 2.5 and 3, Llama 3.1 and 3.2,
//! Phi-3.5, Mistral Nemo, Gemma, SmolLM3: llama.cpp's copies in `models/templates/`), rendered
//! by us and by llama.cpp's `llama-server` (`/apply-template`, recorded by
//! `scripts/oracles/record-templates.sh`) for the same conversations, tool calls included where
//! the template has them: the text must be the same, and a client's spelling of a control
//! token stays text.

use std::path::{Path, PathBuf};

use engine_api::ChatMessage;
use local_engine::text::chat_prompt;
use local_engine::text::chat_template::CivilDate;
use local_engine::text::ChatTemplate;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates")
}

/// The recorded server's vocabulary (the tiny Qwen 2 model of the oracle tests).
const BOS: &str = "<s>";
const EOS: &str = "<|im_end|>";
const CONTROL_TOKENS: [&str; 4] = ["<|im_start|>", "<|im_end|>", "<s>", "</s>"];

/// An OpenAI-shaped message as the gateway hands it to engines: tool calls' `arguments`
/// parsed into objects.
fn message(m: &Value) -> ChatMessage {
    let mut message = ChatMessage::new(
        m["role"].as_str().unwrap(),
        m["content"].as_str().unwrap_or_default(),
    );
    message.tool_calls = m["tool_calls"].as_array().map(|calls| {
        calls
            .iter()
            .map(|call| {
                let mut call = call.clone();
                let arguments = call["function"]["arguments"].as_str().unwrap().to_string();
                call["function"]["arguments"] = serde_json::from_str(&arguments).unwrap();
                call
            })
            .collect()
    });
    message.tool_call_id = m["tool_call_id"].as_str().map(str::to_string);
    message
}

/// The day the renderings were recorded (templates print today's date), from PROVENANCE.
fn recorded_on() -> CivilDate {
    let provenance = std::fs::read_to_string(fixtures().join("PROVENANCE")).unwrap();
    let date = provenance.trim().rsplit(' ').next().unwrap();
    let parts: Vec<&str> = date.split('-').collect();
    CivilDate {
        year: parts[0].parse().unwrap(),
        month: parts[1].parse().unwrap(),
        day: parts[2].parse().unwrap(),
    }
}

fn check(name: &str) {
    let source = std::fs::read_to_string(fixtures().join(format!("{name}.jinja"))).unwrap();
    let recording: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("{name}.llama-cpp.json"))).unwrap(),
    )
    .unwrap();
    let template = ChatTemplate::new(&source, BOS, EOS)
        .expect("template compiles")
        .with_today(recorded_on());
    let spells = |text: &str| CONTROL_TOKENS.iter().any(|t| text.contains(t));
    let cases = recording["cases"].as_array().unwrap();
    assert!(cases.len() >= 3, "{name}: {} cases", cases.len());
    for case in cases {
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(message)
            .collect();
        let tools: Option<Vec<Value>> = case["tools"].as_array().cloned();
        let rendered = chat_prompt::render(&template, &messages, tools.as_deref(), &spells)
            .unwrap_or_else(|e| panic!("{name} / {}: {e}", case["name"]));
        assert_eq!(
            rendered.text, case["prompt"],
            "{name} / {}: ours differs from llama.cpp's",
            case["name"]
        );
        if case["name"] == "markup_in_text" {
            let inside = |needle: &str| {
                let at = rendered.text.find(needle).unwrap();
                rendered.client.iter().any(|r| r.contains(&at))
            };
            assert!(
                inside("<|im_start|> and </s> literally"),
                "{name}: {rendered:?}"
            );
        }
    }
}

macro_rules! template_tests {
    ($($test:ident => $name:literal,)*) => {$(
        #[test]
        fn $test() {
            check($name);
        }
    )*};
}

template_tests! {
    qwen2_5 => "Qwen-Qwen2.5-7B-Instruct",
    qwen3 => "Qwen-Qwen3-0.6B",
    llama3_1 => "meta-llama-Llama-3.1-8B-Instruct",
    llama3_2 => "meta-llama-Llama-3.2-3B-Instruct",
    phi3_5 => "microsoft-Phi-3.5-mini-instruct",
    mistral_nemo => "mistralai-Mistral-Nemo-Instruct-2407",
    gemma => "google-gemma-2-2b-it",
    smollm3 => "HuggingFaceTB-SmolLM3-3B",
}

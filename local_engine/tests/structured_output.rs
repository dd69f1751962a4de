//! Structured output and log probabilities on the real SmolLM2-135M-Instruct: every output
//! under a JSON schema parses and validates (independently checked with the `jsonschema`
//! crate), at temperature 1 over many seeds; log probabilities agree with the sampler.

use std::sync::{Arc, OnceLock};

use engine_api::{
    ChatMessage, Engine, EngineError, GenerationRequest, OutputConstraint, Prompt, SamplingParams,
};
use local_engine::{CoreConfig, LocalEngine};
use local_engine::{LoadedModel, ModelFile};
use model_fetch::{default_cache_dir, ensure_model, DEFAULT_MODEL};
use models::WeightFormat;
use serde_json::{json, Value};

fn engine() -> &'static LocalEngine {
    static ENGINE: OnceLock<LocalEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let path = ensure_model(&DEFAULT_MODEL, &default_cache_dir()).expect("model fetch");
        let model = LoadedModel::load(&ModelFile {
            path,
            device: local_engine::DeviceSpec::Cpu,
            weight_format: WeightFormat::AsStored,
        })
        .expect("model load");
        LocalEngine::with_model("smollm2", Arc::new(model), &CoreConfig::default()).unwrap()
    })
}

fn chat(text: &str) -> Prompt {
    Prompt::Chat(vec![ChatMessage::new("user", text)])
}

fn request(prompt: Prompt, params: SamplingParams) -> GenerationRequest {
    GenerationRequest::new(prompt, params, policies::TenantId::new("t").unwrap())
}

/// Schemas with nested objects, enums, arrays, bounded numbers and strings (bounded so that
/// every output fits `max_tokens`: a cut-off output could not parse).
fn schemas() -> Vec<Value> {
    vec![
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 24},
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "address": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "maxLength": 20},
                        "country": {"enum": ["FR", "DE", "CN", "US"]}
                    },
                    "required": ["city", "country"],
                    "additionalProperties": false
                }
            },
            "required": ["name", "age", "address"],
            "additionalProperties": false
        }),
        json!({
            "type": "object",
            "properties": {
                "verdict": {"enum": ["guilty", "not guilty", "mistrial"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "reasons": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 30},
                    "minItems": 1,
                    "maxItems": 3
                }
            },
            "required": ["verdict", "confidence", "reasons"],
            "additionalProperties": false
        }),
        json!({
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "drug": {"type": "string", "maxLength": 16},
                    "dose_mg": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "route": {"enum": ["oral", "iv", "topical"]},
                    "urgent": {"type": "boolean"}
                },
                "required": ["drug", "dose_mg", "route", "urgent"],
                "additionalProperties": false
            },
            "minItems": 1,
            "maxItems": 2
        }),
    ]
}

#[test]
fn json_schema_output_always_parses_and_validates_at_temperature_one() {
    let engine = engine();
    const SEEDS: u64 = 8;
    for schema in schemas() {
        let validator = jsonschema::validator_for(&schema).expect("the test's schema is valid");
        let constraint = Arc::new(OutputConstraint::JsonSchema(schema.clone()));
        let requests = (0..SEEDS)
            .map(|seed| {
                request(
                    chat("Answer in JSON about a patient, a court case or a person."),
                    SamplingParams {
                        temperature: 1.0,
                        seed: Some(seed),
                        max_tokens: 400,
                        constraint: Some(constraint.clone()),
                        ..SamplingParams::default()
                    },
                )
            })
            .collect();
        let mut texts = Vec::new();
        for stream in engine.submit_all(requests).unwrap() {
            let out = stream.blocking_collect().unwrap();
            assert_eq!(
                out.completion.finish_reason,
                engine_api::FinishReason::Stop,
                "{}",
                out.text
            );
            let value: Value = serde_json::from_str(&out.text)
                .unwrap_or_else(|e| panic!("does not parse ({e}): {}", out.text));
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{}: {errors:?}", out.text);
            texts.push(out.text);
        }
        texts.sort();
        texts.dedup();
        assert!(texts.len() > 1, "seeds should vary the output: {texts:?}");
    }
}

#[test]
fn json_object_mode_gives_an_object() {
    let out = engine()
        .submit(request(
            chat("List three colours."),
            SamplingParams {
                max_tokens: 200,
                constraint: Some(Arc::new(OutputConstraint::JsonObject)),
                ..SamplingParams::greedy(200)
            },
        ))
        .unwrap()
        .blocking_collect()
        .unwrap();
    let value: Value =
        serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{e}: {}", out.text));
    assert!(value.is_object(), "{}", out.text);
    // Unconstrained, the same prompt does not answer in JSON: the mask did the work.
    let free = engine()
        .submit(request(
            chat("List three colours."),
            SamplingParams::greedy(40),
        ))
        .unwrap()
        .blocking_collect()
        .unwrap();
    assert!(
        serde_json::from_str::<Value>(&free.text).is_err(),
        "{}",
        free.text
    );
}

#[test]
fn a_schema_the_grammar_engine_cannot_use_is_refused_at_submission() {
    let bad = OutputConstraint::JsonSchema(
        json!({"type": "object", "properties": {"a": {"type": "nope"}}}),
    );
    let err = engine()
        .submit(request(
            chat("hi"),
            SamplingParams {
                constraint: Some(Arc::new(bad)),
                ..SamplingParams::greedy(8)
            },
        ))
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidConstraint(_)), "{err:?}");
}

#[test]
fn greedy_logprobs_agree_with_the_choice_and_with_each_other() {
    let params = SamplingParams {
        logprobs: Some(5),
        ..SamplingParams::greedy(24)
    };
    let prompt = chat("Write one sentence about the sea.");
    let out = engine()
        .submit(request(prompt.clone(), params.clone()))
        .unwrap()
        .blocking_collect()
        .unwrap();
    assert_eq!(out.logprobs.len(), out.token_ids.len());
    let tokenizer = &engine().model().tokenizer;
    for (lp, &id) in out.logprobs.iter().zip(&out.token_ids) {
        assert_eq!(lp.top.len(), 5);
        // Greedy: the sampled token is the most likely one.
        assert_eq!(lp.sampled.bytes, lp.top[0].bytes);
        assert_eq!(lp.sampled.logprob, lp.top[0].logprob);
        assert_eq!(lp.sampled.bytes, tokenizer.token_bytes(id));
        assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        let mass: f32 = lp.top.iter().map(|t| t.logprob.exp()).sum();
        assert!(lp.top[0].logprob <= 0.0 && mass <= 1.0 + 1e-4, "{mass}");
    }
    // The text is the sampled tokens' bytes (the end-of-sequence token aside).
    let bytes: Vec<u8> = out
        .token_ids
        .iter()
        .filter(|&&id| !tokenizer.is_special(id))
        .flat_map(|&id| tokenizer.token_bytes(id).to_vec())
        .collect();
    assert_eq!(String::from_utf8(bytes).unwrap(), out.text);
    // Asked again, alongside other work, the same numbers come back.
    let again = engine()
        .submit_all(vec![
            request(prompt, params),
            request(chat("Something else."), SamplingParams::greedy(24)),
        ])
        .unwrap()
        .remove(0)
        .blocking_collect()
        .unwrap();
    let total = |o: &engine_api::CollectedOutput| -> f32 {
        o.logprobs.iter().map(|l| l.sampled.logprob).sum()
    };
    assert_eq!(again.token_ids, out.token_ids);
    assert!(
        (total(&again) - total(&out)).abs() < 1e-2,
        "{} vs {}",
        total(&again),
        total(&out)
    );
}

//! Models of the families the CPU engine serves besides the default, through the real gateway:
//! ids from the file's name, what `/v1/models` says of them, a completion and a chat on each
//! architecture's tiny model, and files the engine cannot serve refused at start with the
//! reason in the log (`/ready`, unauthenticated, says `failed` only).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{digest, Options, TestGateway};
use serde_json::json;

const KEY: &str = "sk-families";

fn tiny(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/tiny")
        .join(name)
        .canonicalize()
        .expect("tiny model fixture")
}

fn config(models: &str) -> String {
    format!(
        "{models}\n[[tenants]]\nid = \"lab\"\nkeys = [\"{}\"]\n",
        digest(KEY)
    )
}

fn start(models: &str) -> TestGateway {
    let config = config(models);
    let mut gw = TestGateway::start(Options {
        config: Some(&config),
        model_flag: false,
        ..Options::default()
    });
    gw.key = KEY.to_string();
    gw
}

#[tokio::test]
async fn every_architecture_serves_under_the_id_its_file_names() {
    let files = [
        ("tiny-llama-Q4_K_M.gguf", "tiny-llama", "llama", "Q4_K_M"),
        ("tiny-qwen2-Q8_0.gguf", "tiny-qwen2", "qwen2", "Q8_0"),
        ("tiny-qwen3-Q4_K_M.gguf", "tiny-qwen3", "qwen3", "Q4_K_M"),
        ("tiny-phi3-Q8_0.gguf", "tiny-phi3", "phi3", "Q8_0"),
        ("tiny-exaone-Q8_0.gguf", "tiny-exaone", "exaone", "Q8_0"),
        ("tiny-gemma3-Q4_K_M.gguf", "tiny-gemma3", "gemma3", "Q4_K_M"),
    ];
    let models: String = files
        .iter()
        .map(|(file, ..)| format!("[[models]]\npath = {:?}\n", tiny(file)))
        .collect();
    let gw = start(&models);
    let (status, list) = gw.get("/v1/models", Some(KEY)).await;
    assert_eq!(status, 200, "{list}");
    for (_, id, architecture, quantization) in files {
        let object = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing from {list}"));
        assert_eq!(object["architecture"], architecture, "{object}");
        assert_eq!(object["quantization"], quantization, "{object}");
        assert_eq!(object["max_model_len"], 512, "{object}");

        let (status, body) = gw
            .post(
                "/v1/completions",
                json!({"model": id, "prompt": "the tea", "max_tokens": 5, "temperature": 0}),
            )
            .await;
        assert_eq!(status, 200, "{id}: {body}");
        assert_eq!(body["usage"]["completion_tokens"], 5, "{id}: {body}");
        let (status, body) = gw
            .post(
                "/v1/chat/completions",
                json!({"model": id, "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 3, "temperature": 0}),
            )
            .await;
        assert_eq!(status, 200, "{id}: {body}");
        assert!(
            body["usage"]["prompt_tokens"].as_u64().unwrap() > 3,
            "{id}: {body}"
        );
    }
}

#[test]
fn two_files_that_name_the_same_id_are_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        config(&format!(
            "[[models]]\npath = {:?}\n[[models]]\npath = {:?}\n",
            tiny("tiny-qwen2-Q8_0.gguf"),
            tiny("tiny-qwen2-Q4_K_M.gguf")
        )),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env("GATEWAY_DATA_DIR", dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("tiny-qwen2"), "{stderr}");
}

#[tokio::test]
async fn an_unknown_architecture_is_refused_at_start_naming_it_and_the_supported_ones() {
    // The tiny llama with its architecture renamed (same length, so offsets hold).
    let mut bytes = std::fs::read(tiny("tiny-llama-Q8_0.gguf")).unwrap();
    let key = b"general.architecture";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("architecture key");
    // Key, then its u32 type and u64 length, then the value `llama`.
    let value = at + key.len() + 4 + 8;
    assert_eq!(&bytes[value..value + 5], b"llama");
    bytes[value..value + 5].copy_from_slice(b"mamba");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mamba.gguf");
    std::fs::write(&file, bytes).unwrap();
    let config = config(&format!("[[models]]\nid = \"mamba\"\npath = {file:?}\n"));
    let gw = TestGateway::start(Options {
        config: Some(&config),
        model_flag: false,
        wait_ready: false,
        capture_stderr: true,
        ..Options::default()
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready = loop {
        let (status, ready) = gw.get("/ready", None).await;
        if ready["models"]["mamba"] != "loading" || Instant::now() > deadline {
            break (status, ready);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert_eq!(ready.1["models"]["mamba"], "failed", "{}", ready.1);
    let log = gw.stderr.lock().unwrap().join("\n");
    assert!(
        log.contains("architecture `mamba` is not supported"),
        "{log}"
    );
    assert!(log.contains("llama, qwen2, qwen3, phi3, exaone"), "{log}");
}

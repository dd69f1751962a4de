//! What the fuzzers feed, from arbitrary bytes, into the parsers that read input from outside
//! the gateway: request bodies (any tenant), the configuration file (an operator, or a rewrite
//! caught half-way), the SSE streams of upstream servers (another machine), and model files.
//!
//! A target passes when it returns: an error is the right answer to bad input, a panic (or a
//! hang, or unbounded memory) is a bug. The `fuzz/` crate runs these functions under libFuzzer
//! (`cargo +nightly fuzz run <target>`, see `scripts/fuzz.sh`); `tests/replay.rs` replays the
//! committed seeds and every input that ever crashed one, on stable, in every test run.

#![warn(missing_docs)]

use gateway::config::GatewayConfig;
use gateway::error::ApiError;
use gateway::openai::chat::ChatCompletionRequest;
use gateway::openai::completions::CompletionRequest;
use gateway::openai::json::parse;
use gateway::openai::params::CommonParams;
use gateway::openai::response::Endpoint;

/// A target: the bytes libFuzzer made up, in; a panic out if it found a bug.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/` and the corpus folders name them.
pub const TARGETS: [(&str, Target); 5] = [
    ("request_body", request_body),
    ("config", config),
    ("upstream_sse", upstream_sse),
    ("gguf_file", gguf_file),
    ("lora_adapter", lora_adapter),
];

/// A LoRA adapter (a tenant's upload), read and checked against a small llama base model's
/// shape (the tiny test models': hidden 256, MLP 512, two layers, four heads over two KV heads),
/// as the engine reads one before serving it.
pub fn lora_adapter(data: &[u8]) {
    let base = models::ModelConfig {
        architecture: models::config::Architecture::Llama,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
        hidden: 256,
        ffn: 512,
        rms_eps: 1e-6,
        rope_base: 10_000.0,
        rope_position_scale: 1.0,
        context_length: 512,
        vocab_size: 512,
        attention_scale: 0.125,
        embedding_scale: 1.0,
        sliding_window: None,
    };
    let _ = models::LoraAdapter::read(&mut std::io::Cursor::new(data), &base);
}

/// A model file (an operator's download, soon a tenant's adapter upload): its header read
/// within bounds, then, if that accepts it, parsed by candle, its architecture's shape and its
/// tokenizer built, and its weights loaded, as the engine loads a model.
pub fn gguf_file(data: &[u8]) {
    use candle_core::quantized::gguf_file::Content;
    let mut cursor = std::io::Cursor::new(data);
    if models::gguf_check::check(&mut cursor).is_err() {
        return;
    }
    let Ok(content) = Content::read(&mut cursor) else {
        return;
    };
    let _ = local_engine::text::GgufTokenizer::from_gguf(&content);
    if models::ModelConfig::from_gguf(&content).is_ok() {
        let _ = models::LlamaModel::from_gguf(
            &content,
            &mut cursor,
            &candle_core::Device::Cpu,
            models::WeightFormat::AsStored,
        );
    }
}

/// A body of `POST /v1/chat/completions` or `/v1/completions`: parsed as the generation
/// preamble does (JSON, each endpoint's own fields, the shared parameters), the conversation
/// flattened and the prompts built, every error rendered as its response body.
pub fn request_body(data: &[u8]) {
    let body = data;
    if let Err(error) = gateway::openai::json::model_name(body) {
        return render(error);
    }
    // Tools (their schemas compiled by the grammar engine) and the conversation they join.
    let chat = parse::<ChatCompletionRequest>(body).and_then(|r| {
        r.tools()
            .and_then(|tools| r.conversation(tools.as_ref()).map(drop))
    });
    let completions = parse::<CompletionRequest>(body).and_then(|r| {
        // The preamble refuses more than `max_prompts_per_request` (64) before building any.
        match r.prompt_count() {
            0..=64 => r.prompts().map(drop),
            _ => Ok(()),
        }
    });
    let params = parse::<CommonParams>(body);
    let (chat_params, text_params) = match params {
        Ok(p) => (
            p.validate(Endpoint::Chat, &Default::default()).map(drop),
            p.validate(Endpoint::Completions, &Default::default())
                .map(drop),
        ),
        Err(e) => (Err(e), Ok(())),
    };
    for error in [chat, completions, chat_params, text_params]
        .into_iter()
        .filter_map(Result::err)
    {
        render(error);
    }
}

fn render(error: ApiError) {
    let json = error.to_json();
    assert!(
        serde_json::from_str::<serde_json::Value>(&json).is_ok(),
        "an error body must be JSON: {json}"
    );
}

/// A configuration file: TOML into the configuration, then every check a start or a reload
/// makes, and what the server derives from each pool.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = toml::from_str::<GatewayConfig>(text) else {
        return;
    };
    if config.validate().is_err() {
        return;
    }
    for model in &config.models {
        for pool in config.pools_of(model) {
            let _ = pool.breaker();
            let _ = pool.stall_timeouts();
        }
    }
}

/// An upstream's answer: the first byte says where to cut the rest into the network's chunks,
/// which go through the SSE decoder the remote engine uses, and every event's data through the
/// chunk reader; the whole input also as an error body.
pub fn upstream_sse(data: &[u8]) {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let size = usize::from(cut % 16) + 1;
    let mut events = remote_engine::sse::SseDecoder::new();
    'read: for piece in body.chunks(size) {
        events.push(piece);
        loop {
            match events.next_event() {
                Ok(None) => break,
                Ok(Some("[DONE]")) => break 'read,
                Ok(Some(data)) => {
                    let _ = remote_engine::wire::read_chunk(data);
                }
                // The call ends there (a failed stream).
                Err(_) => break 'read,
            }
        }
    }
    let refusal = remote_engine::wire::refusal(body);
    assert!(refusal.message.chars().count() <= 500);
}

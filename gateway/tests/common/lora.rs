//! LoRA adapters for the default model, written in llama.cpp's GGUF adapter format.

use std::path::Path;

use serde_json::{json, Value};

use super::{call, TestGateway};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// A rank-8 adapter of every down projection of SmolLM2-135M (30 layers, MLP 1536, hidden 576).
pub fn write_adapter(path: &Path, seed: u64) {
    write_adapter_with_input(path, seed, 1536)
}

/// [`write_adapter`] with `lora_a` reading `ffn` inputs (1536 fits the model; any other does
/// not).
pub fn write_adapter_with_input(path: &Path, seed: u64, ffn: usize) {
    let (layers, hidden, rank) = (30, 576, 8);
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut random = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    };
    let mut tensors = Vec::new();
    for layer in 0..layers {
        let a = Tensor::from_vec(
            random(rank * ffn, 1.7 / (ffn as f32).sqrt()),
            (rank, ffn),
            &Device::Cpu,
        )
        .unwrap();
        let b = Tensor::from_vec(
            random(hidden * rank, 1.7 / (rank as f32).sqrt()),
            (hidden, rank),
            &Device::Cpu,
        )
        .unwrap();
        for (part, t) in [("lora_a", a), ("lora_b", b)] {
            let name = format!("blk.{layer}.ffn_down.weight.{part}");
            tensors.push((name, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
        }
    }
    let metadata = [
        (
            "general.architecture",
            gguf_file::Value::String("llama".into()),
        ),
        ("general.type", gguf_file::Value::String("adapter".into())),
        ("adapter.type", gguf_file::Value::String("lora".into())),
        ("adapter.lora.alpha", gguf_file::Value::F32(16.0)),
    ];
    let metadata: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}

/// A greedy chat answer (12 tokens) from `model` with `key`: `(status, body)`.
pub async fn ask(gw: &TestGateway, key: &str, model: &str) -> (u16, Value) {
    call(
        gw,
        "POST",
        "/v1/chat/completions",
        key,
        Some(json!({"model": model, "max_tokens": 12, "temperature": 0,
                    "messages": [{"role": "user", "content": "Describe the sea in one sentence."}]})),
    )
    .await
}

/// The text of an answer's first choice.
pub fn text(body: &Value) -> String {
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

//! LoRA adapters through the engine: requests that name adapters (and some that do not) run
//! together in the request core's batches, each generating what its model with its adapter
//! generates alone; an adapter's prompt never reuses the base model's cached blocks; a file
//! that is not an adapter for the model is the request's error, naming the adapter.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use engine_api::{AdapterRef, Engine, EngineError, GenerationRequest, Prompt, SamplingParams};
use local_engine::{LoadedModel, LocalEngine, ModelFile, WeightFormat};
use models::{LlamaModel, LoraAdapter};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures")
}

fn base_file(arch: &str) -> PathBuf {
    fixtures().join(format!("tiny/tiny-{arch}-Q8_0.gguf"))
}

fn adapter(stem: &str) -> AdapterRef {
    AdapterRef {
        id: stem.to_string(),
        path: fixtures().join(format!("tiny-lora/{stem}.gguf")),
    }
}

fn engine(arch: &str) -> LocalEngine {
    let model = LoadedModel::load(&ModelFile {
        path: base_file(arch),
        device: local_engine::DeviceSpec::Cpu,
        weight_format: WeightFormat::AsStored,
    })
    .unwrap();
    LocalEngine::with_model(arch, Arc::new(model), &Default::default()).unwrap()
}

/// What the model alone (no engine) generates greedily from `prompt` with `adapter`.
fn reference(arch: &str, adapter: Option<&AdapterRef>, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut file = std::fs::File::open(base_file(arch)).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let model =
        LlamaModel::from_gguf(&content, &mut file, &Device::Cpu, WeightFormat::AsStored).unwrap();
    let lora = adapter.map(|a| {
        LoraAdapter::read(&mut std::fs::File::open(&a.path).unwrap(), model.config()).unwrap()
    });
    let mut cache = model.new_cache().unwrap();
    let (mut input, mut out) = (prompt.to_vec(), Vec::new());
    for _ in 0..n {
        let logits: Vec<f32> = model
            .forward_solo_adapted(&mut cache, &input, true, lora.as_ref())
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let next = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap() as u32;
        out.push(next);
        input = vec![next];
    }
    out
}

fn request(prompt: &[u32], adapter: Option<AdapterRef>, n: usize) -> GenerationRequest {
    let mut params = SamplingParams::greedy(n);
    params.ignore_eos = true;
    let mut request = GenerationRequest::new(
        Prompt::Tokens(prompt.to_vec()),
        params,
        "t".parse().unwrap(),
    );
    request.adapter = adapter;
    request
}

#[test]
fn requests_of_several_adapters_batch_together_and_each_gets_its_own_answer() {
    let engine = engine("llama");
    let adapters = [
        Some(adapter("tiny-llama-lora-f32")),
        Some(adapter("tiny-llama-lora-q8_0")),
        Some(adapter("tiny-llama-lora-b-f16")),
        Some(adapter("tiny-llama-lora-c-f16")),
        None,
    ];
    let n = 8;
    let cases: Vec<(Vec<u32>, Option<AdapterRef>)> = (0..10)
        .map(|i| {
            let prompt = (0..(4 + i % 5))
                .map(|j| ((i * 37 + j * 11) % 500) as u32)
                .collect();
            (prompt, adapters[i % adapters.len()].clone())
        })
        .collect();
    // All submitted before any is read: the core runs them in the same steps.
    let streams: Vec<_> = cases
        .iter()
        .map(|(prompt, adapter)| engine.submit(request(prompt, adapter.clone(), n)).unwrap())
        .collect();
    for ((prompt, adapter), stream) in cases.iter().zip(streams) {
        let out = stream.blocking_collect().unwrap();
        let wanted = reference("llama", adapter.as_ref(), prompt, n);
        assert_eq!(
            out.token_ids,
            wanted,
            "{:?}",
            adapter.as_ref().map(|a| &a.id)
        );
    }
    let loaded = engine.loaded_adapters();
    assert_eq!(loaded.len(), 4, "{loaded:?}");
}

#[test]
fn an_adapters_prompt_never_reuses_the_base_models_cached_blocks() {
    let engine = engine("qwen2");
    // 40 tokens: two full blocks of 16 go to the prefix cache after the first request.
    let prompt: Vec<u32> = (0..40).map(|j| (j * 13 % 500) as u32).collect();
    let n = 6;
    let base = engine
        .submit(request(&prompt, None, n))
        .unwrap()
        .blocking_collect()
        .unwrap();
    assert_eq!(base.token_ids, reference("qwen2", None, &prompt, n));
    let lora = adapter("tiny-qwen2-lora-f16");
    let adapted = engine
        .submit(request(&prompt, Some(lora.clone()), n))
        .unwrap()
        .blocking_collect()
        .unwrap();
    assert_eq!(
        adapted.completion.usage.cached_tokens, 0,
        "reused the base model's blocks"
    );
    assert_eq!(
        adapted.token_ids,
        reference("qwen2", Some(&lora), &prompt, n)
    );
    // The same adapter again does reuse its own.
    let again = engine
        .submit(request(&prompt, Some(lora.clone()), n))
        .unwrap()
        .blocking_collect()
        .unwrap();
    assert!(again.completion.usage.cached_tokens >= 32);
    assert_eq!(again.token_ids, adapted.token_ids);
}

#[test]
fn an_adapter_for_another_model_is_the_requests_error() {
    let engine = engine("qwen2");
    let wrong = adapter("tiny-llama-lora-f32");
    match engine.submit(request(&[1, 2, 3], Some(wrong), 2)) {
        Err(EngineError::InvalidInput(message)) => {
            assert!(message.contains("tiny-llama-lora-f32"), "{message}");
            assert!(
                message.contains("llama") && message.contains("qwen2"),
                "{message}"
            );
        }
        other => panic!("{:?}", other.map(|_| "a stream")),
    }
    let missing = AdapterRef {
        id: "gone".into(),
        path: fixtures().join("tiny-lora/no-such-file.gguf"),
    };
    assert!(matches!(
        engine.submit(request(&[1, 2, 3], Some(missing), 2)),
        Err(EngineError::InvalidInput(_))
    ));
    // The engine still serves.
    let out = engine
        .submit(request(&[1, 2, 3], None, 2))
        .unwrap()
        .blocking_collect()
        .unwrap();
    assert_eq!(out.token_ids.len(), 2);
}

#[test]
fn a_file_is_checked_without_loading_and_an_id_given_another_file_is_another_adapter() {
    let engine = engine("llama");
    let f32_file = adapter("tiny-llama-lora-f32");
    assert_eq!(engine.check_adapter(&f32_file.path).unwrap(), 16);
    assert!(
        engine.loaded_adapters().is_empty(),
        "checking loads nothing"
    );
    match engine.check_adapter(&adapter("tiny-qwen2-lora-f16").path) {
        Err(EngineError::InvalidInput(why)) => assert!(why.contains("qwen2"), "{why}"),
        other => panic!("{other:?}"),
    }
    // The id `tuned` with one file, then (re-registered) with another: each answers as its own
    // file does, the second never from the first's weights or cached blocks.
    let prompt: Vec<u32> = (0..40).map(|j| (j * 7 % 500) as u32).collect();
    let n = 6;
    for stem in ["tiny-llama-lora-f32", "tiny-llama-lora-b-f16"] {
        let tuned = AdapterRef {
            id: "tuned".into(),
            path: adapter(stem).path,
        };
        let out = engine
            .submit(request(&prompt, Some(tuned.clone()), n))
            .unwrap()
            .blocking_collect()
            .unwrap();
        assert_eq!(
            out.token_ids,
            reference("llama", Some(&tuned), &prompt, n),
            "{stem}"
        );
        assert_eq!(out.completion.usage.cached_tokens, 0, "{stem}");
    }
    assert_eq!(engine.loaded_adapters(), ["tuned"]);
    engine.unload_adapter("tuned");
    assert!(engine.loaded_adapters().is_empty());
}

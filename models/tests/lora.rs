//! LoRA adapters on the CPU path: adapters in llama.cpp's GGUF format for the tiny models
//! (`scripts/oracles/make_tiny_loras.py`) are read and checked against their base (errors name
//! the tensor), change what the model answers as llama.cpp's `llama-server --lora` does
//! (recorded by `scripts/oracles/record-lora.sh`), and a step mixing sequences of several
//! adapters and the base model gives each sequence what it gets alone with its adapter.
//!
//! Tolerances: the model oracle's for Q8_0 files (`llama_cpp_oracle.rs`), though llama.cpp
//! also rounds the adapters' input (to f16 for F16 factors, to 8 bits for Q8_0 ones; we keep
//! it in f32): measured 0.10-0.17 worst, 0.025-0.046 mean (2026-12-07). An adapter applied
//! with the wrong scale, to the wrong projection or columns moves the log-probabilities by
//! whole units.

mod oracle;

use std::io::Cursor;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use models::config::BlockTable;
use models::{AdapterError, LlamaModel, LoraAdapter, SequenceInput, WeightFormat};

use oracle::{compare, fixtures};

fn base(arch: &str) -> LlamaModel {
    let path = fixtures().join(format!("tiny/tiny-{arch}-Q8_0.gguf"));
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    LlamaModel::from_gguf(&content, &mut file, &Device::Cpu, WeightFormat::AsStored).unwrap()
}

fn adapter_bytes(stem: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(format!("tiny-lora/{stem}.gguf"))).unwrap()
}

fn adapter(model: &LlamaModel, stem: &str) -> LoraAdapter {
    LoraAdapter::read(&mut Cursor::new(adapter_bytes(stem)), model.config())
        .unwrap_or_else(|e| panic!("{stem}: {e}"))
}

/// The logits of each step of a greedy run of `prompt` for `steps` tokens, alone.
fn solo(
    model: &LlamaModel,
    adapter: Option<&LoraAdapter>,
    prompt: &[u32],
    steps: usize,
) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache().unwrap();
    let mut input = prompt.to_vec();
    let mut all = Vec::new();
    for _ in 0..steps {
        let logits: Vec<f32> = model
            .forward_solo_adapted(&mut cache, &input, true, adapter)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let next = argmax(&logits);
        all.push(logits);
        input = vec![next];
    }
    all
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap() as u32
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn every_architectures_adapter_loads_and_changes_the_answer() {
    for (arch, stem, rank) in [
        ("llama", "tiny-llama-lora-f32", 16),
        ("llama", "tiny-llama-lora-q8_0", 32),
        ("llama", "tiny-llama-lora-b-f16", 16),
        ("qwen2", "tiny-qwen2-lora-f16", 16),
        ("qwen3", "tiny-qwen3-lora-f16", 16),
        ("phi3", "tiny-phi3-lora-f16", 16),
        ("exaone", "tiny-exaone-lora-f16", 16),
        ("gemma3", "tiny-gemma3-lora-f16", 16),
    ] {
        let model = base(arch);
        let lora = adapter(&model, stem);
        assert_eq!(lora.rank(), rank, "{stem}");
        assert!(lora.bytes() > 0);
        let prompt = [509, 72, 101, 108, 108, 111];
        let plain = solo(&model, None, &prompt, 1);
        let adapted = solo(&model, Some(&lora), &prompt, 1);
        let moved = max_diff(&plain[0], &adapted[0]);
        assert!(
            moved > 0.5,
            "{stem}: the adapter moved the logits by only {moved}"
        );
    }
}

#[test]
fn an_adapter_with_alpha_zero_b_is_the_base_model() {
    // Scaled to nothing: a file whose alpha is tiny relative to its rank changes nothing.
    let model = base("llama");
    let lora = adapter(&model, "tiny-llama-lora-f32");
    let nothing = LoraAdapter::new(
        lora.rank(),
        1e-30,
        (0..model.config().n_layers)
            .map(|l| lora.layer(l).unwrap().clone())
            .collect(),
    );
    let prompt = [509, 72, 101];
    let plain = solo(&model, None, &prompt, 2);
    let adapted = solo(&model, Some(&nothing), &prompt, 2);
    for (p, a) in plain.iter().zip(&adapted) {
        assert!(max_diff(p, a) < 1e-4);
    }
}

#[test]
#[allow(clippy::needless_range_loop)]
fn a_mixed_step_gives_each_sequence_what_it_gets_alone() {
    let model = base("llama");
    let adapters = [
        adapter(&model, "tiny-llama-lora-f32"),
        adapter(&model, "tiny-llama-lora-q8_0"),
        adapter(&model, "tiny-llama-lora-b-f16"),
        adapter(&model, "tiny-llama-lora-c-f16"),
    ];
    // 16 sequences over the four adapters and the base model (every fifth).
    let which = |i: usize| -> Option<&LoraAdapter> {
        match i % 5 {
            4 => None,
            k => Some(&adapters[k]),
        }
    };
    let prompts: Vec<Vec<u32>> = (0..16)
        .map(|i| {
            (0..(3 + i % 7))
                .map(|j| ((i * 31 + j * 17) % 500) as u32)
                .collect()
        })
        .collect();
    let steps = 3;
    let alone: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| solo(&model, which(i), p, steps))
        .collect();
    // The same sequences in one batch per step, each with its own blocks of one pool.
    let block = 16;
    let per_seq_blocks = model.config().context_length.div_ceil(block);
    let mut workspace = model.new_workspace(16 * per_seq_blocks, block).unwrap();
    let mut tables: Vec<BlockTable> = (0..16)
        .map(|i| BlockTable {
            blocks: ((i * per_seq_blocks) as u32..((i + 1) * per_seq_blocks) as u32).collect(),
            len: 0,
        })
        .collect();
    let mut inputs: Vec<Vec<u32>> = prompts.clone();
    for step in 0..steps {
        let logits = {
            let mut batch: Vec<SequenceInput<'_>> = inputs
                .iter()
                .zip(tables.iter_mut())
                .enumerate()
                .map(|(i, (tokens, table))| SequenceInput {
                    tokens,
                    table,
                    wants_logits: true,
                    adapter: which(i),
                })
                .collect();
            model.forward(&mut workspace, &mut batch).unwrap()
        };
        let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
        for (i, row) in rows.iter().enumerate() {
            let diff = max_diff(row, &alone[i][step]);
            assert!(diff < 1e-3, "sequence {i} step {step}: {diff} from alone");
            inputs[i] = vec![argmax(&alone[i][step])];
        }
    }
}

#[test]
fn adapters_that_do_not_fit_are_refused_naming_why() {
    let llama = base("llama");
    let qwen2 = base("qwen2");
    let error = |bytes: Vec<u8>, model: &LlamaModel| {
        LoraAdapter::read(&mut Cursor::new(bytes), model.config()).expect_err("refused")
    };
    // Another architecture.
    match error(adapter_bytes("tiny-llama-lora-f32"), &qwen2) {
        AdapterError::WrongArchitecture { adapter, base } => {
            assert_eq!((adapter.as_str(), base.as_str()), ("llama", "qwen2"))
        }
        other => panic!("{other}"),
    }
    // A base whose MLP is wider than the adapter was made for: the first tensor that does not
    // fit is named.
    let mut wider = llama.config().clone();
    wider.ffn *= 2;
    let refused = LoraAdapter::read(
        &mut Cursor::new(adapter_bytes("tiny-llama-lora-f32")),
        &wider,
    )
    .expect_err("refused");
    let message = refused.to_string();
    assert!(
        matches!(refused, AdapterError::Shape { .. }) && message.contains("ffn_"),
        "{message}"
    );
    // A model file is not an adapter.
    let model_file = std::fs::read(fixtures().join("tiny/tiny-llama-Q8_0.gguf")).unwrap();
    assert!(matches!(
        error(model_file, &llama),
        AdapterError::NotAnAdapter(_)
    ));
    // A truncated adapter fails on its header, before anything is allocated from it.
    let mut cut = adapter_bytes("tiny-llama-lora-f32");
    cut.truncate(cut.len() / 3);
    assert!(matches!(error(cut, &llama), AdapterError::Gguf(_)));
    // Not GGUF at all.
    assert!(matches!(
        error(b"not a gguf file at all".to_vec(), &llama),
        AdapterError::Gguf(_)
    ));
}

/// Worst and mean log-probability difference allowed against llama.cpp with an adapter.
const WITH_ADAPTER: (f32, f32) = (0.25, 0.06);

fn oracle(stem: &str) {
    let dir = fixtures().join("tiny-lora");
    let recording = dir.join(format!("{stem}.llama-cpp.json"));
    let adapter = dir.join(format!("{stem}.gguf"));
    let (max_diff, mean_diff) = WITH_ADAPTER;
    let (worst, mean, wrong) = compare(&recording, Some(&adapter), max_diff);
    eprintln!("{stem}: max |Δ logprob| {worst:.4}, mean {mean:.5}");
    assert!(worst <= max_diff, "{stem}: max logprob difference {worst}");
    assert!(mean <= mean_diff, "{stem}: mean logprob difference {mean}");
    assert!(wrong.is_empty(), "{stem}: greedy choices differ: {wrong:?}");
}

macro_rules! lora_oracle_tests {
    ($($name:ident => $stem:literal;)*) => {$(
        #[test]
        fn $name() {
            oracle($stem);
        }
    )*};
}

lora_oracle_tests! {
    llama_adapter_f32_matches_llama_cpp => "tiny-llama-lora-f32";
    llama_adapter_q8_0_matches_llama_cpp => "tiny-llama-lora-q8_0";
    llama_adapter_f16_matches_llama_cpp => "tiny-llama-lora-b-f16";
    llama_adapter_rank_8_matches_llama_cpp => "tiny-llama-lora-c-f16";
    qwen2_adapter_matches_llama_cpp => "tiny-qwen2-lora-f16";
    qwen3_adapter_matches_llama_cpp => "tiny-qwen3-lora-f16";
    phi3_fused_adapter_matches_llama_cpp => "tiny-phi3-lora-f16";
    exaone_adapter_matches_llama_cpp => "tiny-exaone-lora-f16";
    gemma3_adapter_matches_llama_cpp => "tiny-gemma3-lora-f16";
}

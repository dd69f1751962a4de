//! Embeddings per second of the embedding engine (all-MiniLM-L6-v2 on the CPU).
//!
//! `cargo bench -p embeddings --bench embeddings` embeds the reference sentences of
//! `embeddings/tests/fixtures/minilm-reference.json` (3-22 tokens, 12 on average), one input per
//! call (batch 1) and 32 inputs per call (batch 32), and prints the median rate of several runs.

use std::time::Instant;

use embeddings::{EmbeddingModel, EmbeddingOptions};
use model_fetch::{default_cache_dir, ensure_bundle};

const RUNS: usize = 5;
const INPUTS_PER_RUN: usize = 256;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = ensure_bundle(&model_fetch::EMBEDDING_MODEL, &default_cache_dir()).expect("model");
    let model = EmbeddingModel::load(&dir, EmbeddingOptions::default()).expect("load");
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../tests/fixtures/minilm-reference.json")).unwrap();
    let sentences: Vec<Vec<u32>> = fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| serde_json::from_value(c["token_ids"].clone()).unwrap())
        .collect();
    let inputs: Vec<Vec<u32>> = sentences
        .iter()
        .cycle()
        .take(INPUTS_PER_RUN)
        .cloned()
        .collect();
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    println!("threads: {}", candle_core::utils::get_num_threads());
    println!("{INPUTS_PER_RUN} inputs of {tokens} tokens in all per run, median of {RUNS} runs");
    for batch in [1usize, 32] {
        // One warm-up run, then the measured ones.
        let mut rates = Vec::new();
        for run in 0..=RUNS {
            let started = Instant::now();
            for chunk in inputs.chunks(batch) {
                runtime.block_on(model.embed(chunk.to_vec())).unwrap();
            }
            if run > 0 {
                rates.push(INPUTS_PER_RUN as f64 / started.elapsed().as_secs_f64());
            }
        }
        let rate = median(rates);
        println!(
            "batch {batch:>2}: {rate:8.1} embeddings/s ({:.0} tokens/s)",
            rate * tokens as f64 / INPUTS_PER_RUN as f64
        );
    }
}

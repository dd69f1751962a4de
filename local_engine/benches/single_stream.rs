//! Single-stream prefill and decode speed of the local engine on the default model.
//!
//! `cargo bench -p local_engine --bench single_stream` prints, for each weight format, the prefill
//! rate over the 38-token chat prompt of `local_engine/tests/fixtures` and the decode rate over 128 greedy
//! tokens (end-of-sequence ignored), as the median of several runs.

use std::time::Instant;

use local_engine::DeviceSpec;
use local_engine::{LoadedModel, ModelFile};
use model_fetch::{default_cache_dir, ensure_model, DEFAULT_MODEL};
use models::WeightFormat;

const RUNS: usize = 5;
const DECODE_TOKENS: usize = 128;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let path = ensure_model(&DEFAULT_MODEL, &default_cache_dir()).expect("model");
    let prompt_text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/smollm2-chat-prompt.txt"),
    )
    .expect("fixture");
    println!("threads: {}", candle_core::utils::get_num_threads());
    for format in [WeightFormat::Q8_0, WeightFormat::AsStored] {
        let load_started = Instant::now();
        let model = LoadedModel::load(&ModelFile {
            path: path.clone(),
            device: DeviceSpec::Cpu,
            weight_format: format,
        })
        .expect("load");
        let load = load_started.elapsed();
        let prompt = model.tokenizer.encode(&prompt_text).unwrap();
        let (mut prefill, mut decode) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let mut cache = model.model.new_cache().unwrap();
            let started = Instant::now();
            let mut logits = model.model.forward_solo(&mut cache, &prompt, true).unwrap();
            prefill.push(prompt.len() as f64 / started.elapsed().as_secs_f64());
            let started = Instant::now();
            for _ in 0..DECODE_TOKENS {
                let next = models::llama::argmax(&logits.squeeze(0).unwrap()).unwrap();
                logits = model.model.forward_solo(&mut cache, &[next], true).unwrap();
            }
            decode.push(DECODE_TOKENS as f64 / started.elapsed().as_secs_f64());
        }
        println!(
            "{format:?}: load {:.2} s, prefill {} tokens: {:.0} tok/s, decode {DECODE_TOKENS} tokens: {:.1} tok/s (median of {RUNS})",
            load.as_secs_f64(),
            prompt.len(),
            median(prefill),
            median(decode),
        );
    }
}

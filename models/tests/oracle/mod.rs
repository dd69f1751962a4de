//! Replaying llama.cpp's recorded answers (`scripts/oracles/record_logits.py`) on our CPU
//! engine: shared by the model oracle and the LoRA oracle tests.
//!
//! Each step of each recorded case is replayed with llama.cpp's chosen tokens (so one
//! disagreement does not cascade).

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::Device;
use models::{LlamaModel, LoraAdapter, WeightFormat};

#[derive(serde::Deserialize)]
struct Recording {
    model: String,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    prompt: Vec<u32>,
    steps: Vec<Step>,
}

#[derive(serde::Deserialize)]
struct Step {
    token: u32,
    top: Vec<(u32, f32)>,
}

/// The test fixtures' folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_sum = sum.ln() as f32 + max;
    logits.iter().map(|&l| l - log_sum).collect()
}

/// Worst and mean difference over every step of the recording (its base model in `tiny/`,
/// with `adapter` if given), and the steps whose greedy choice differs although llama.cpp's top
/// two are clearly apart.
pub fn compare(
    recording: &Path,
    adapter: Option<&Path>,
    margin_needed: f32,
) -> (f32, f32, Vec<String>) {
    let recording: Recording =
        serde_json::from_str(&std::fs::read_to_string(recording).expect("recording"))
            .expect("recording parses");
    let path = fixtures().join("tiny").join(&recording.model);
    let mut file = std::fs::File::open(&path).expect("model file");
    let content = gguf_file::Content::read(&mut file).expect("gguf");
    let model = LlamaModel::from_gguf(&content, &mut file, &Device::Cpu, WeightFormat::AsStored)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let adapter = adapter.map(|path| {
        let mut file = std::fs::File::open(path).expect("adapter file");
        LoraAdapter::read(&mut file, model.config())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    });
    let (mut worst, mut total, mut count) = (0f32, 0f64, 0usize);
    let mut wrong_choices = Vec::new();
    for (c, case) in recording.cases.iter().enumerate() {
        let mut cache = model.new_cache().unwrap();
        let mut input = case.prompt.clone();
        for (s, step) in case.steps.iter().enumerate() {
            let logits = model
                .forward_solo_adapted(&mut cache, &input, true, adapter.as_ref())
                .unwrap();
            let logits: Vec<f32> = logits.squeeze(0).unwrap().to_vec1().unwrap();
            let ours = log_softmax(&logits);
            for &(id, theirs) in &step.top {
                let diff = (ours[id as usize] - theirs).abs();
                worst = worst.max(diff);
                total += diff as f64;
                count += 1;
            }
            let ours_best = (0..ours.len())
                .max_by(|&a, &b| ours[a].total_cmp(&ours[b]))
                .unwrap() as u32;
            let margin = step.top[0].1 - step.top.get(1).map_or(f32::NEG_INFINITY, |t| t.1);
            if ours_best != step.token && margin > margin_needed {
                wrong_choices.push(format!(
                    "case {c} step {s}: ours {ours_best}, llama.cpp {} (margin {margin})",
                    step.token
                ));
            }
            input = vec![step.token];
        }
    }
    (worst, (total / count.max(1) as f64) as f32, wrong_choices)
}

//! Throughput and latency of the request core at several concurrencies, on the default model.
//!
//! `cargo bench -p local_engine --bench request_core [-- 1 4 16 64]`: for each concurrency C, C
//! clients submit at once, each streaming 128 greedy tokens (end-of-sequence ignored) from a
//! ~20-token prompt; reports aggregate output tokens/s, time to first token and inter-token
//! latency (p50/p99) as seen by the clients.
//!
//! `BENCH_DEVICE` picks the device the model runs on (`cpu`, the default, or `cuda:0` in a build
//! with the `cuda` feature); `GATEWAY_CACHE_DIR` where the model file is found (or fetched).

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_api::{Engine, EngineCounters, GenerationRequest, Prompt, SamplingParams, TokenEvent};
use local_engine::CoreConfig;
use local_engine::{DeviceSpec, LocalEngine};
use local_engine::{LoadedModel, ModelFile};
use model_fetch::{default_cache_dir, ensure_model, DEFAULT_MODEL};

const OUTPUT_TOKENS: usize = 128;
const PROMPT: &str =
    "In a small village by the sea, an old fisherman told the children a story about";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank]
}

/// One short request before the timed runs, so that one-time costs (a GPU's kernels are compiled
/// from PTX at first use) do not land in the first concurrency's TTFT.
fn warm_up(model: &Arc<LoadedModel>) {
    let engine = LocalEngine::with_model("warm-up", model.clone(), &CoreConfig::default()).unwrap();
    let mut stream = engine
        .submit(GenerationRequest {
            project_share: None,
            prompt: Prompt::Text(PROMPT.to_string()),
            params: SamplingParams::greedy(4),
            tenant: "bench".parse().unwrap(),
            share: Default::default(),
            traceparent: None,
            cache_scope: None,
            adapter: None,
        })
        .unwrap();
    while let Some(event) = stream.blocking_next() {
        if matches!(event, TokenEvent::Finished(_)) {
            break;
        }
    }
}

fn main() {
    let concurrencies: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let concurrencies = if concurrencies.is_empty() {
        vec![1, 4, 16, 64]
    } else {
        concurrencies
    };
    let threads = local_engine::threads::configure(None);
    let device: DeviceSpec = std::env::var("BENCH_DEVICE")
        .unwrap_or_else(|_| "cpu".to_string())
        .parse()
        .expect("BENCH_DEVICE");
    let path = ensure_model(&DEFAULT_MODEL, &default_cache_dir()).expect("model");
    let model = Arc::new(
        LoadedModel::load(&ModelFile {
            path,
            device,
            weight_format: Default::default(),
        })
        .expect("load"),
    );
    let prompt_tokens = model.tokenizer.encode(PROMPT).unwrap().len();
    println!(
        "device {device}, threads {threads}, prompt {prompt_tokens} tokens, {OUTPUT_TOKENS} tokens out per request"
    );
    warm_up(&model);
    println!("| concurrency | aggregate output tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | mean batch tokens/step |");
    println!("|---|---|---|---|---|---|---|");
    for c in concurrencies {
        let engine = Arc::new(
            LocalEngine::with_model(
                "bench",
                model.clone(),
                &CoreConfig {
                    max_running: 64,
                    ..CoreConfig::default()
                },
            )
            .unwrap(),
        );
        let request = GenerationRequest {
            project_share: None,
            prompt: Prompt::Text(PROMPT.to_string()),
            params: SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(OUTPUT_TOKENS)
            },
            tenant: "bench".parse().unwrap(),
            share: Default::default(),
            traceparent: None,
            cache_scope: None,
            adapter: None,
        };
        let started = Instant::now();
        let clients: Vec<_> = (0..c)
            .map(|_| {
                let mut stream = engine.submit(request.clone()).unwrap();
                let submitted = Instant::now();
                std::thread::spawn(move || {
                    let mut arrivals = Vec::with_capacity(OUTPUT_TOKENS);
                    while let Some(event) = stream.blocking_next() {
                        match event {
                            TokenEvent::Token { .. } => arrivals.push(Instant::now()),
                            TokenEvent::Finished(_) => break,
                            TokenEvent::Failed(failure) => panic!("{failure}"),
                            TokenEvent::Unavailable(e) | TokenEvent::Declined(e) => panic!("{e}"),
                            TokenEvent::Refused(refusal) => panic!("{}", refusal.message),
                        }
                    }
                    (submitted, arrivals)
                })
            })
            .collect();
        let results: Vec<(Instant, Vec<Instant>)> =
            clients.into_iter().map(|h| h.join().unwrap()).collect();
        let wall = started.elapsed();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut ttft: Vec<f64> = results.iter().map(|(s, a)| ms(a[0] - *s)).collect();
        let mut itl: Vec<f64> = results
            .iter()
            .flat_map(|(_, a)| a.windows(2).map(|w| ms(w[1] - w[0])).collect::<Vec<_>>())
            .collect();
        ttft.sort_by(f64::total_cmp);
        itl.sort_by(f64::total_cmp);
        let tokens: usize = results.iter().map(|(_, a)| a.len()).sum();
        let counters = engine.counters();
        let mean_batch = EngineCounters::get(&counters.batch_tokens) as f64
            / EngineCounters::get(&counters.steps).max(1) as f64;
        println!(
            "| {c} | {:.1} | {:.0} ms | {:.0} ms | {:.1} ms | {:.1} ms | {mean_batch:.1} |",
            tokens as f64 / wall.as_secs_f64(),
            percentile(&ttft, 50.0),
            percentile(&ttft, 99.0),
            percentile(&itl, 50.0),
            percentile(&itl, 99.0),
        );
    }
}

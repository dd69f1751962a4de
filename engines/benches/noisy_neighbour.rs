//! A quiet tenant's time to first token, alone and beside a noisy tenant sending 10x its
//! request rate, with fair share on and off. In process (no HTTP), open-loop Poisson arrivals
//! from a fixed seed, on the default model.
//!
//! `cargo bench -p engines --bench noisy_neighbour [-- SECONDS]` (default 40 s per run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use engines::core::CoreConfig;
use engines::local::{LoadedModel, ModelFile};
use engines::model_fetch::{default_cache_dir, ensure_model, DEFAULT_MODEL};
use engines::{
    DeviceSpec, Engine, GenerationRequest, LocalEngine, Prompt, SamplingParams, TokenEvent,
};
use rand::{Rng, SeedableRng};

const QUIET_RATE: f64 = 0.5; // requests per second
const NOISY_RATE: f64 = 5.0;
const OUTPUT_TOKENS: usize = 48;
const MAX_RUNNING: usize = 16;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

/// Arrival offsets of a Poisson process over `duration`.
fn arrivals(rate: f64, duration: Duration, seed: u64) -> Vec<Duration> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut t = 0.0;
    let mut out = Vec::new();
    loop {
        t += -(1.0 - rng.gen::<f64>()).ln() / rate;
        if t >= duration.as_secs_f64() {
            return out;
        }
        out.push(Duration::from_secs_f64(t));
    }
}

/// Submits each tenant's arrivals on schedule; returns the quiet tenant's TTFTs in ms.
fn run(model: &Arc<LoadedModel>, fair_share: bool, noisy: bool, duration: Duration) -> Vec<f64> {
    let engine = Arc::new(
        LocalEngine::with_model(
            "bench",
            model.clone(),
            &CoreConfig {
                max_running: MAX_RUNNING,
                fair_share,
                ..CoreConfig::default()
            },
        )
        .unwrap(),
    );
    let mut schedule: Vec<(Duration, &str)> = arrivals(QUIET_RATE, duration, 1)
        .into_iter()
        .map(|t| (t, "quiet"))
        .collect();
    if noisy {
        schedule.extend(
            arrivals(NOISY_RATE, duration, 2)
                .into_iter()
                .map(|t| (t, "noisy")),
        );
    }
    schedule.sort();
    let start = Instant::now();
    let mut clients = Vec::new();
    for (at, tenant) in schedule {
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let request = GenerationRequest::new(
            Prompt::Text("Write a short note about the weather today.".into()),
            SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(OUTPUT_TOKENS)
            },
            tenant.parse().unwrap(),
        );
        let mut stream = engine.submit(request).unwrap();
        let submitted = Instant::now();
        clients.push((
            tenant,
            std::thread::spawn(move || {
                let mut ttft = None;
                while let Some(event) = stream.blocking_next() {
                    match event {
                        TokenEvent::Token { .. } if ttft.is_none() => {
                            ttft = Some(submitted.elapsed())
                        }
                        TokenEvent::Finished(_) | TokenEvent::Failed(_) => break,
                        _ => {}
                    }
                }
                ttft
            }),
        ));
    }
    let mut quiet: Vec<f64> = clients
        .into_iter()
        .filter_map(|(tenant, h)| {
            let ttft = h.join().unwrap()?;
            (tenant == "quiet").then_some(ttft.as_secs_f64() * 1000.0)
        })
        .collect();
    quiet.sort_by(f64::total_cmp);
    quiet
}

fn main() {
    let seconds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(40);
    let duration = Duration::from_secs(seconds);
    engines::threads::configure(None);
    let path = ensure_model(&DEFAULT_MODEL, &default_cache_dir()).expect("model");
    let model = Arc::new(
        LoadedModel::load(&ModelFile {
            path,
            device: DeviceSpec::Cpu,
            weight_format: Default::default(),
        })
        .expect("load"),
    );
    println!(
        "quiet {QUIET_RATE} req/s, noisy {NOISY_RATE} req/s, {OUTPUT_TOKENS} tokens out, max_running {MAX_RUNNING}, {seconds} s per run"
    );
    println!("| run | quiet requests | quiet TTFT p50 | quiet TTFT p99 |");
    println!("|---|---|---|---|");
    for (label, fair, noisy) in [
        ("quiet alone", true, false),
        ("with noisy neighbour, fair share on", true, true),
        ("with noisy neighbour, fair share off", false, true),
    ] {
        let ttft = run(&model, fair, noisy, duration);
        println!(
            "| {label} | {} | {:.0} ms | {:.0} ms |",
            ttft.len(),
            percentile(&ttft, 50.0),
            percentile(&ttft, 99.0)
        );
    }
}

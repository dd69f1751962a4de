//! A quiet tenant's time to first token and inter-token latency, alone and beside a noisy
//! tenant sending 10x its request rate: the noisy tenant in the `batch` class (the gateway's
//! CPU settings: one batch token beside interactive work, steps paused for interactive
//! arrivals), and in the same class with fair share on and off. In process (no HTTP), so the
//! engine's part of the latency is seen apart from the server's; open-loop Poisson arrivals
//! from a fixed seed, on the default model.
//!
//! `cargo bench -p local_engine --bench noisy_neighbour [-- SECONDS]` (default 40 s per run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_api::{Engine, GenerationRequest, Prompt, SamplingParams, TokenEvent};
use local_engine::CoreConfig;
use local_engine::{DeviceSpec, LocalEngine};
use local_engine::{LoadedModel, ModelFile};
use model_fetch::{default_cache_dir, ensure_model, DEFAULT_MODEL};
use policies::{Priority, Share};
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

/// One run's setup.
struct Setup {
    fair_share: bool,
    noisy: Option<Priority>,
}

/// Submits each tenant's arrivals on schedule; returns the quiet tenant's TTFTs and
/// inter-token gaps, in ms.
fn run(model: &Arc<LoadedModel>, setup: Setup, duration: Duration) -> (Vec<f64>, Vec<f64>) {
    let engine = Arc::new(
        LocalEngine::with_model(
            "bench",
            model.clone(),
            &CoreConfig {
                max_running: MAX_RUNNING,
                fair_share: setup.fair_share,
                lower_class_step_tokens: Some(DeviceSpec::Cpu.default_lower_class_step_tokens()),
                ..CoreConfig::default()
            },
        )
        .unwrap(),
    );
    let mut schedule: Vec<(Duration, &str)> = arrivals(QUIET_RATE, duration, 1)
        .into_iter()
        .map(|t| (t, "quiet"))
        .collect();
    if setup.noisy.is_some() {
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
        let mut request = GenerationRequest::new(
            Prompt::Text("Write a short note about the weather today.".into()),
            SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(OUTPUT_TOKENS)
            },
            tenant.parse().unwrap(),
        );
        if tenant == "noisy" {
            request.share = Share {
                priority: setup.noisy.unwrap_or_default(),
                ..Share::default()
            };
        }
        let mut stream = engine.submit(request).unwrap();
        let submitted = Instant::now();
        clients.push((
            tenant,
            std::thread::spawn(move || {
                let mut arrivals = Vec::new();
                while let Some(event) = stream.blocking_next() {
                    match event {
                        TokenEvent::Token { .. } => arrivals.push(Instant::now()),
                        TokenEvent::Finished(_) | TokenEvent::Failed(_) => break,
                        _ => {}
                    }
                }
                (submitted, arrivals)
            }),
        ));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (mut ttft, mut itl) = (Vec::new(), Vec::new());
    for (tenant, client) in clients {
        let (submitted, arrivals) = client.join().unwrap();
        if tenant != "quiet" || arrivals.is_empty() {
            continue;
        }
        ttft.push(ms(arrivals[0] - submitted));
        itl.extend(arrivals.windows(2).map(|w| ms(w[1] - w[0])));
    }
    ttft.sort_by(f64::total_cmp);
    itl.sort_by(f64::total_cmp);
    (ttft, itl)
}

fn main() {
    let seconds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(40);
    let duration = Duration::from_secs(seconds);
    local_engine::threads::configure(None);
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
    println!("| run | quiet requests | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |");
    println!("|---|---|---|---|---|---|");
    for (label, fair_share, noisy) in [
        ("quiet alone", true, None),
        ("noisy neighbour in `batch`", true, Some(Priority::Batch)),
        (
            "noisy neighbour, same class, fair share on",
            true,
            Some(Priority::Interactive),
        ),
        (
            "noisy neighbour, same class, fair share off",
            false,
            Some(Priority::Interactive),
        ),
    ] {
        let (ttft, itl) = run(&model, Setup { fair_share, noisy }, duration);
        println!(
            "| {label} | {} | {:.0} ms | {:.0} ms | {:.1} ms | {:.1} ms |",
            ttft.len(),
            percentile(&ttft, 50.0),
            percentile(&ttft, 99.0),
            percentile(&itl, 50.0),
            percentile(&itl, 99.0)
        );
    }
}

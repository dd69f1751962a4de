//! Runs a scenario: open-loop tenants fire on their schedule whatever the server does, closed
//! loops keep a fixed number of requests in flight; live progress on the terminal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use tokio::sync::mpsc;

use crate::arrival::schedule;
use crate::client::{send, Request};
use crate::prompts::PromptSource;
use crate::report::{Outcome, Report, RequestRecord};
use crate::scenario::{Arrival, Scenario, TenantLoad};

/// Live counters for the progress line.
#[derive(Default)]
struct Progress {
    sent: AtomicU64,
    done: AtomicU64,
    rate_limited: AtomicU64,
    errors: AtomicU64,
    output_tokens: Arc<AtomicU64>,
}

/// Run-wide request budget (the stop rule's `requests`).
struct Tickets(AtomicU64);

impl Tickets {
    fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

fn api_key(tenant: &TenantLoad) -> anyhow::Result<String> {
    match tenant.api_key.strip_prefix("env:") {
        Some(name) => std::env::var(name)
            .map_err(|_| anyhow::anyhow!("tenant `{}`: ${name} is not set", tenant.label)),
        None => Ok(tenant.api_key.clone()),
    }
}

/// Runs `scenario` against `url` and reports what the clients saw.
pub async fn run(url: &str, scenario: Scenario, show_progress: bool) -> anyhow::Result<Report> {
    let scenario = Arc::new(scenario);
    // One pooled client: connections are reused across requests.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let horizon = Duration::from_secs_f64(
        scenario
            .stop
            .duration_secs
            .unwrap_or(f64::MAX / 4.0)
            .min(1e9),
    );
    let tickets = Arc::new(Tickets(AtomicU64::new(
        scenario.stop.requests.unwrap_or(u64::MAX),
    )));
    let progress = Arc::new(Progress::default());
    let (records_tx, mut records_rx) = mpsc::unbounded_channel::<RequestRecord>();
    let start = Instant::now();
    let mut drivers = Vec::new();

    for (i, tenant) in scenario.tenants.iter().enumerate() {
        let key = api_key(tenant)?;
        let seed = scenario.seed.wrapping_add(i as u64);
        let mut prompts = PromptSource::new(&tenant.prompts)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x9e37_79b9);
        let limit = scenario.stop.requests.unwrap_or(u64::MAX);
        let model = Arc::new(tenant.model.clone().unwrap_or(scenario.model.clone()));
        let extra_body = Arc::new(tenant.extra_body.clone());
        let fire = {
            let (client, url, scenario, tickets, progress, tx, label) = (
                client.clone(),
                url.to_string(),
                scenario.clone(),
                tickets.clone(),
                progress.clone(),
                records_tx.clone(),
                tenant.label.clone(),
            );
            move |prompt: Vec<crate::prompts::Message>, max_tokens: u64| {
                let (client, url, scenario, progress, tx, label, key) = (
                    client.clone(),
                    url.clone(),
                    scenario.clone(),
                    progress.clone(),
                    tx.clone(),
                    label.clone(),
                    key.clone(),
                );
                let (model, extra_body) = (model.clone(), extra_body.clone());
                let tickets = tickets.clone();
                async move {
                    if !tickets.take() {
                        return None;
                    }
                    progress.sent.fetch_add(1, Ordering::Relaxed);
                    let request = Request {
                        tenant: &label,
                        api_key: &key,
                        model: &model,
                        extra_body: &extra_body,
                        prompt,
                        max_tokens,
                        sent_at: start.elapsed(),
                    };
                    // Streamed tokens are counted as they arrive; whole responses at the end.
                    let live = scenario.stream.then(|| progress.output_tokens.clone());
                    let (record, answer) = send(&client, &url, &scenario, request, live).await;
                    progress.done.fetch_add(1, Ordering::Relaxed);
                    match record.outcome {
                        Outcome::Ok if !scenario.stream => {
                            progress
                                .output_tokens
                                .fetch_add(record.output_tokens, Ordering::Relaxed);
                        }
                        Outcome::Ok => {}
                        Outcome::RateLimited => {
                            progress.rate_limited.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            progress.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    };
                    let _ = tx.send(record);
                    Some(answer)
                }
            }
        };
        match schedule(&tenant.arrival, seed, horizon, limit) {
            // Open loop: each request is spawned at its time; a slow server never delays the next.
            Some(times) => {
                let requests: Vec<(Duration, Vec<crate::prompts::Message>, u64)> = times
                    .into_iter()
                    .map(|t| {
                        (
                            t,
                            prompts.next(&mut rng),
                            tenant.max_tokens.sample(&mut rng),
                        )
                    })
                    .collect();
                drivers.push(tokio::spawn(async move {
                    let mut in_flight = Vec::new();
                    for (at, prompt, max_tokens) in requests {
                        tokio::time::sleep_until((start + at).into()).await;
                        in_flight.push(tokio::spawn(fire(prompt, max_tokens)));
                    }
                    for request in in_flight {
                        let _ = request.await;
                    }
                }));
            }
            // Closed loop: `concurrency` clients, each sending again when its request ends.
            None => {
                let Arrival::ClosedLoop { concurrency } = tenant.arrival else {
                    unreachable!()
                };
                for _ in 0..concurrency {
                    let fire = fire.clone();
                    let mut prompts = PromptSource::new(&tenant.prompts)?;
                    let mut rng = rand::rngs::StdRng::seed_from_u64(rng_seed(&mut rng));
                    let max_tokens = tenant.max_tokens.clone();
                    drivers.push(tokio::spawn(async move {
                        while start.elapsed() < horizon {
                            let prompt = prompts.next(&mut rng);
                            match fire(prompt, max_tokens.sample(&mut rng)).await {
                                Some(answer) => prompts.answered(answer),
                                None => break,
                            }
                        }
                    }));
                }
            }
        }
    }
    drop(records_tx);

    // A bar over the run's known length (its duration, or its request count, whichever ends
    // it first), so indicatif can show an ETA.
    const BAR: u64 = 1000;
    let bar = show_progress.then(|| {
        let bar = indicatif::ProgressBar::new(BAR);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:30} {elapsed_precise} (ETA {eta}) {msg}")
        {
            bar.set_style(style);
        }
        bar
    });
    let (stop_secs, stop_requests) = (scenario.stop.duration_secs, scenario.stop.requests);
    let ticker = bar.clone().map(|bar| {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let p = &progress;
                let (sent, done) = (p.sent.load(Ordering::Relaxed), p.done.load(Ordering::Relaxed));
                let tokens = p.output_tokens.load(Ordering::Relaxed);
                let rate = (tokens - last.1) as f64 / last.0.elapsed().as_secs_f64();
                last = (Instant::now(), tokens);
                let by_time = stop_secs.map_or(0.0, |d| start.elapsed().as_secs_f64() / d);
                let by_count = stop_requests.map_or(0.0, |n| done as f64 / n.max(1) as f64);
                bar.set_position((by_time.max(by_count).min(1.0) * BAR as f64) as u64);
                bar.set_message(format!(
                    "sent {sent}  done {done}  in flight {}  429 {}  errors {}  {tokens} tokens  {rate:.0} tok/s",
                    sent - done,
                    p.rate_limited.load(Ordering::Relaxed),
                    p.errors.load(Ordering::Relaxed),
                ));
            }
        })
    });
    for driver in drivers {
        driver.await?;
    }
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let duration = start.elapsed().as_secs_f64();
    let mut records = Vec::new();
    while let Some(r) = records_rx.recv().await {
        records.push(r);
    }
    records.sort_by(|a, b| a.sent_at_ms.total_cmp(&b.sent_at_ms));
    Ok(Report::new(
        url,
        &scenario.model,
        duration,
        records,
        &scenario.slo,
    ))
}

fn rng_seed(rng: &mut impl rand::Rng) -> u64 {
    rng.gen()
}

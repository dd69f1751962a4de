//! The soak driver (run by `scripts/soak.sh`, which starts the gateway): everything hostile at
//! once against a running gateway, on loopback, bounded in time and count, while a well-behaved
//! tenant keeps sending requests; then what it cost.
//!
//! 1. Idle: the well-behaved tenant alone, for its success rate and p99 latency.
//! 2. Attack, for `--attack-secs`, all at once:
//!    - `--idle-connections` TCP connections opened and held without a byte sent (each one the
//!      gateway closes is opened again);
//!    - `--slowloris` connections trickling a request head, a byte a second;
//!    - a disconnect storm: `--storm` loops that start a streamed completion and hang up at its
//!      first chunk, over and over, on new connections;
//!    - a reload every second: the config file swapped between two versions (atomically, by
//!      rename, as an operator's tooling would);
//!    - the well-behaved tenant as in 1.
//! 3. After: every attacking connection closed, a pause, the gateway's RSS and open files again.
//!    Then 2 and 3 again (`--rounds`): what a leak would keep grows from round to round.
//!
//! It prints one JSON object (the figures `docs/benchmarks.md` quotes) and exits non-zero if the
//! well-behaved tenant lost a request.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
struct Args {
    /// The gateway, `host:port`.
    #[arg(long)]
    addr: String,
    /// The gateway's process id (for RSS and open files).
    #[arg(long)]
    pid: u32,
    /// The live config file, and the two versions swapped into it every second.
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    config_a: PathBuf,
    #[arg(long)]
    config_b: PathBuf,
    /// The well-behaved tenant's key.
    #[arg(long)]
    good_key: String,
    /// The storm's key (another tenant).
    #[arg(long)]
    storm_key: String,
    /// The model to ask.
    #[arg(long, default_value = "syn")]
    model: String,
    #[arg(long, default_value_t = 15)]
    idle_secs: u64,
    #[arg(long, default_value_t = 60)]
    attack_secs: u64,
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    #[arg(long, default_value_t = 200)]
    slowloris: usize,
    #[arg(long, default_value_t = 16)]
    storm: usize,
    /// Concurrent well-behaved requests.
    #[arg(long, default_value_t = 4)]
    good_concurrency: usize,
    /// `max_tokens` of a well-behaved request.
    #[arg(long, default_value_t = 10)]
    good_tokens: u32,
    /// Seconds to wait after each attack before reading RSS and open files.
    #[arg(long, default_value_t = 10)]
    settle_secs: u64,
    /// Attacks one after the other: memory that comes back after each is not leaking.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// What one phase of well-behaved requests saw.
#[derive(Debug, Default)]
struct Phase {
    latencies_ms: Vec<f64>,
    failures: u64,
    first_failure: Option<String>,
}

impl Phase {
    fn p(&self, q: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n => v[((n as f64 * q).ceil() as usize).clamp(1, n) - 1],
        }
    }

    fn success_rate(&self) -> f64 {
        let ok = self.latencies_ms.len() as f64;
        ok / (ok + self.failures as f64)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.latencies_ms.len() as u64 + self.failures,
            "failures": self.failures,
            "success_rate": self.success_rate(),
            "p50_ms": self.p(0.50),
            "p99_ms": self.p(0.99),
            "first_failure": self.first_failure,
        })
    }
}

/// The well-behaved tenant: `concurrency` loops of plain completions, for `secs`.
async fn well_behaved(args: &Args, secs: u64) -> Phase {
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/completions", args.addr);
    let body = serde_json::json!({
        "model": args.model, "prompt": "one two three", "max_tokens": args.good_tokens,
    });
    let until = Instant::now() + Duration::from_secs(secs);
    let loops = (0..args.good_concurrency).map(|_| {
        let (client, url, body, key) = (
            client.clone(),
            url.clone(),
            body.clone(),
            args.good_key.clone(),
        );
        tokio::spawn(async move {
            let mut phase = Phase::default();
            while Instant::now() < until {
                let started = Instant::now();
                let sent = client.post(&url).bearer_auth(&key).json(&body).send().await;
                let outcome = match sent {
                    Ok(r) if r.status().is_success() => r.bytes().await.map_err(|e| e.to_string()),
                    Ok(r) => Err(format!(
                        "status {}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => Err(e.to_string()),
                };
                match outcome {
                    Ok(_) => phase
                        .latencies_ms
                        .push(started.elapsed().as_secs_f64() * 1e3),
                    Err(e) => {
                        phase.failures += 1;
                        phase.first_failure.get_or_insert(e);
                    }
                }
            }
            phase
        })
    });
    let mut all = Phase::default();
    for phase in futures::future::join_all(loops).await {
        let phase = phase.expect("a well-behaved loop panicked");
        all.latencies_ms.extend(phase.latencies_ms);
        all.failures += phase.failures;
        if all.first_failure.is_none() {
            all.first_failure = phase.first_failure;
        }
    }
    all
}

/// The gateway's resident memory (kB) and open files.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// Counters of the attack, for the report.
#[derive(Default)]
struct Attack {
    stop: AtomicBool,
    /// Idle connections open now.
    held: AtomicU64,
    /// Idle and slowloris connections the gateway closed.
    closed_by_gateway: AtomicU64,
    slowloris_cut: AtomicU64,
    storm_hangups: AtomicU64,
    storm_errors: AtomicU64,
    connect_errors: AtomicU64,
    reloads: AtomicU64,
}

/// One idle connection, opened again whenever the gateway closes it.
async fn hold_idle(addr: String, attack: Arc<Attack>) {
    while !attack.stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            attack.connect_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        attack.held.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 64];
        let _ = stream.read(&mut buf).await;
        attack.held.fetch_sub(1, Ordering::Relaxed);
        attack.closed_by_gateway.fetch_add(1, Ordering::Relaxed);
    }
}

/// One slowloris connection: a request head a byte a second, never finished.
async fn slowloris(addr: String, attack: Arc<Attack>) {
    let head = b"POST /v1/completions HTTP/1.1\r\nHost: soak\r\nX-Slow: ";
    while !attack.stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            attack.connect_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut sent = 0;
        loop {
            let byte = head.get(sent).copied().unwrap_or(b'a');
            if stream.write_all(&[byte]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        attack.slowloris_cut.fetch_add(1, Ordering::Relaxed);
    }
}

/// One storm loop: a streamed completion on a new connection, dropped at its first chunk.
async fn storm(addr: String, key: String, model: String, attack: Arc<Attack>) {
    let body = serde_json::json!({
        "model": model, "prompt": "storm", "max_tokens": 200, "stream": true,
    })
    .to_string();
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    while !attack.stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            attack.connect_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let hung_up = async {
            stream.write_all(request.as_bytes()).await.ok()?;
            loop {
                let n = stream.read(&mut buf).await.ok()?;
                if n == 0 {
                    return None;
                }
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(5).any(|w| w == b"data:") {
                    return Some(());
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), hung_up).await {
            Ok(Some(())) => attack.storm_hangups.fetch_add(1, Ordering::Relaxed),
            _ => attack.storm_errors.fetch_add(1, Ordering::Relaxed),
        };
        // Dropped here, mid-stream.
    }
}

/// Swaps the config file between its two versions every second.
async fn reloads(args: Arc<Args>, attack: Arc<Attack>) {
    let versions = [
        std::fs::read(&args.config_a).expect("config A"),
        std::fs::read(&args.config_b).expect("config B"),
    ];
    let staging = args.config.with_extension("soak-tmp");
    let mut i = 0;
    while !attack.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        i += 1;
        std::fs::write(&staging, &versions[i % 2]).expect("writing the staged config");
        std::fs::rename(&staging, &args.config).expect("swapping the config");
        attack.reloads.fetch_add(1, Ordering::Relaxed);
    }
}

/// One attack: everything at once for `--attack-secs` with the well-behaved tenant measured,
/// then every attacking connection closed and a pause.
async fn attack_round(args: &Arc<Args>, round: usize) -> (Phase, serde_json::Value) {
    let attack = Arc::new(Attack::default());
    let mut tasks = Vec::new();
    eprintln!(
        "round {round}: {} idle connections, {} slowloris, {} storm loops, a reload a second",
        args.idle_connections, args.slowloris, args.storm
    );
    for i in 0..args.idle_connections {
        tasks.push(tokio::spawn(hold_idle(args.addr.clone(), attack.clone())));
        // Opened in steps, as a crowd arrives, not as one SYN flood the kernel backlog drops.
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for _ in 0..args.slowloris {
        tasks.push(tokio::spawn(slowloris(args.addr.clone(), attack.clone())));
    }
    for _ in 0..args.storm {
        tasks.push(tokio::spawn(storm(
            args.addr.clone(),
            args.storm_key.clone(),
            args.model.clone(),
            attack.clone(),
        )));
    }
    tasks.push(tokio::spawn(reloads(args.clone(), attack.clone())));
    let started = Instant::now();
    while attack.held.load(Ordering::Relaxed) < args.idle_connections as u64 * 95 / 100
        && started.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held_at_start = attack.held.load(Ordering::Relaxed);
    let during = footprint(args.pid);
    eprintln!(
        "round {round}: {held_at_start} held; the well-behaved tenant for {} s",
        args.attack_secs
    );
    let attacked = well_behaved(args, args.attack_secs).await;
    let end = footprint(args.pid);
    attack.stop.store(true, Ordering::Relaxed);
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    eprintln!("round {round} over: settling for {} s", args.settle_secs);
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let after = footprint(args.pid);
    let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "well_behaved": attacked.json(),
        "rss_kb": {"during": during.0, "end_of_attack": end.0, "after": after.0},
        "open_files": {"during": during.1, "end_of_attack": end.1, "after": after.1},
        "idle_connections_held_at_start": held_at_start,
        "idle_connections_closed_by_gateway": c(&attack.closed_by_gateway),
        "slowloris_cut": c(&attack.slowloris_cut),
        "storm_hangups": c(&attack.storm_hangups),
        "storm_errors": c(&attack.storm_errors),
        "connect_errors": c(&attack.connect_errors),
        "reloads_written": c(&attack.reloads),
    });
    (attacked, report)
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    eprintln!(
        "idle: the well-behaved tenant alone for {} s",
        args.idle_secs
    );
    // A short warm-up first, not measured.
    well_behaved(&args, 2).await;
    let idle = well_behaved(&args, args.idle_secs).await;
    let before = footprint(args.pid);

    let mut rounds = Vec::new();
    let mut attacked = Phase::default();
    for round in 1..=args.rounds {
        let (phase, report) = attack_round(&args, round).await;
        attacked.latencies_ms.extend(phase.latencies_ms);
        attacked.failures += phase.failures;
        if attacked.first_failure.is_none() {
            attacked.first_failure = phase.first_failure;
        }
        rounds.push(report);
    }
    let after_check = well_behaved(&args, 3).await;

    let report = serde_json::json!({
        "idle": idle.json(),
        "attacked": attacked.json(),
        "after": after_check.json(),
        "p99_ratio": attacked.p(0.99) / idle.p(0.99),
        "gateway_before": {"rss_kb": before.0, "open_files": before.1},
        "rounds": rounds,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let lost = idle.failures + attacked.failures + after_check.failures;
    if lost > 0 {
        eprintln!("the well-behaved tenant lost {lost} requests");
        std::process::exit(1);
    }
}

//! `loadtest run --url URL --scenario FILE [--out report.json] [--plots DIR]`, `loadtest compare A B`,
//! `loadtest plot REPORT --out DIR`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use loadtest::{compare, failure_reasons, Report, Scenario, Summary};

/// `println!` that ends the program quietly when the reader has gone (`loadtest ... | head`)
/// instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            return Err(e.into());
        }
    }};
}

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load-test any OpenAI-compatible endpoint"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario against an endpoint.
    Run {
        /// Base URL of the endpoint, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        url: String,
        /// Scenario file (TOML, see docs/loadtest.md).
        #[arg(long)]
        scenario: PathBuf,
        /// Where to write the JSON report.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also draw SVG pictures (latency CDFs per tenant, throughput over time) into this folder.
        #[arg(long)]
        plots: Option<PathBuf>,
        /// No live progress line.
        #[arg(long)]
        quiet: bool,
    },
    /// Print two saved reports side by side, with ratios B / A.
    Compare { a: PathBuf, b: PathBuf },
    /// Draw the pictures of a saved report (as `run --plots`).
    Plot {
        report: PathBuf,
        /// Folder to write the SVG files into.
        #[arg(long)]
        out: PathBuf,
    },
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn print_summary(name: &str, s: &Summary) -> anyhow::Result<()> {
    say!(
        "{name:<12} sent {:>5}  ok {:>5}  429 {:>4}  4xx {:>3}  5xx {:>3}  transport {:>3}  {:>7.2} req/s  {:>8.1} tok/s  goodput {:.2}",
        s.sent, s.ok, s.rate_limited, s.client_errors, s.server_errors, s.transport_errors,
        s.request_throughput, s.output_throughput, s.goodput
    );
    say!(
        "{:<12} TTFT p50/p99 {} / {} ms  ITL p50/p99 {} / {} ms  TPOT p50 {} ms  E2E p50/p99 {} / {} ms",
        "", ms(s.ttft_ms.p50), ms(s.ttft_ms.p99), ms(s.itl_ms.p50), ms(s.itl_ms.p99),
        ms(s.tpot_ms.p50), ms(s.e2el_ms.p50), ms(s.e2el_ms.p99)
    );
    Ok(())
}

fn load(path: &PathBuf) -> anyhow::Result<Report> {
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            url,
            scenario,
            out,
            plots,
            quiet,
        } => {
            let scenario = Scenario::load(&scenario)?;
            if url.trim_end_matches('/').ends_with("/v1") {
                eprintln!(
                    "warning: --url ends in /v1, but the harness adds /v1/... itself: requests \
                     go to {}/v1/...; give the server's base URL",
                    url.trim_end_matches('/')
                );
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(loadtest::run(&url, scenario, !quiet))?;
            say!("{} for {:.1} s", report.url, report.duration_s);
            print_summary("overall", &report.overall)?;
            for (tenant, summary) in &report.tenants {
                print_summary(tenant, summary)?;
            }
            let reasons = failure_reasons(&report.requests);
            if !reasons.is_empty() {
                say!("failures:");
                for (count, outcome, reason) in reasons.iter().take(10) {
                    say!("  {count:>6} x {outcome:?}: {reason}");
                }
            }
            if let Some(out) = out {
                std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
                say!("report written to {}", out.display());
            }
            if let Some(dir) = plots {
                for file in loadtest::write_plots(&report, &dir)? {
                    say!("picture written to {}", file.display());
                }
            }
            if report.overall.sent > 0 && report.overall.ok == 0 {
                eprintln!("error: every request failed (reasons above)");
                std::process::exit(1);
            }
        }
        Command::Compare { a, b } => {
            say!("A: {}", a.display());
            say!("B: {}", b.display());
            say!("{}", compare(&load(&a)?, &load(&b)?));
        }
        Command::Plot { report, out } => {
            for file in loadtest::write_plots(&load(&report)?, &out)? {
                say!("picture written to {}", file.display());
            }
        }
    }
    Ok(())
}

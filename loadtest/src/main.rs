//! `loadtest`: the load-test harness for any OpenAI-compatible endpoint.
//!
//! Only the command line exists so far: the harness itself (arrivals, measurements, reports,
//! plots, compare) is its own piece of work and is not implemented yet. Both commands say so
//! and exit with status 2 rather than pretend to measure anything.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
        /// Scenario file (TOML).
        #[arg(long)]
        scenario: PathBuf,
        /// Where to write the JSON report.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Compare two saved reports.
    Compare { a: PathBuf, b: PathBuf },
}

fn main() {
    let cli = Cli::parse();
    let what = match cli.command {
        Command::Run { .. } => "run",
        Command::Compare { .. } => "compare",
    };
    eprintln!("loadtest {what}: the load-test harness is not implemented yet; only its command line exists.");
    std::process::exit(2);
}

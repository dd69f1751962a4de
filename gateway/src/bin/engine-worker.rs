//! `engine-worker`: serves this machine's local engines over the OpenAI-compatible API, behind
//! a shared secret, so that a gateway elsewhere can route to it (see `docs/pools.md`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use gateway::config::GatewayConfig;

#[derive(Parser)]
#[command(
    name = "engine-worker",
    version,
    about = "Serves local engines to remote gateways (OpenAI-compatible API + GET /load)"
)]
struct Cli {
    /// Configuration file: `[[models]]`, local `[[pools]]`, `[engine]`, `[server]`,
    /// `[telemetry]`. Without one: the default model on the CPU.
    #[arg(long, env = "ENGINE_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, overriding the config (default 127.0.0.1:8080).
    #[arg(long, env = "ENGINE_WORKER_LISTEN")]
    listen: Option<SocketAddr>,
    /// GGUF file for the first model, overriding the config (and the fetch).
    #[arg(long, env = "ENGINE_WORKER_MODEL")]
    model: Option<PathBuf>,
    /// Environment variable that holds the shared secret gateways present as their bearer key.
    #[arg(long, default_value = "ENGINE_WORKER_SECRET")]
    secret_env: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let secret = std::env::var(&cli.secret_env).with_context(|| {
        format!(
            "set the shared secret in the environment variable `{}`",
            cli.secret_env
        )
    })?;
    let mut config = match &cli.config {
        Some(path) => GatewayConfig::load(path)?,
        None => GatewayConfig::default(),
    };
    config.apply_overrides(cli.listen, cli.model)?;
    let config = gateway::worker::worker_config(config, &secret)?;
    gateway::server::run("engine-worker", config, None)
}

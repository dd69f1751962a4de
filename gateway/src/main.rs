//! The `gateway` binary: `gateway [serve]` runs the server, `gateway keys` manages API keys,
//! `gateway admin` calls the admin API.

mod admin_cli;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use gateway::config::{GatewayConfig, TenantConfig};
use policies::{ApiKey, TenantId};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Multi-tenant OpenAI-compatible model-serving gateway"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `gateway` alone means `gateway serve`.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Create and hash API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Run the centre through the admin API: tenants, projects, keys, usage, audit.
    Admin(admin_cli::AdminArgs),
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// Configuration file (TOML). Without one, the embedded default runs: the default model on
    /// the CPU and one tenant `demo`.
    #[arg(long, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (`IP:PORT` or `HOST:PORT`), overriding the config.
    #[arg(long, env = "GATEWAY_LISTEN", value_parser = gateway::config::resolve_listen)]
    listen: Option<SocketAddr>,
    /// GGUF file for the first configured model, overriding the config (and the fetch).
    #[arg(long, env = "GATEWAY_MODEL")]
    model: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random key and its stored form.
    New {
        #[arg(long)]
        tenant: TenantId,
    },
    /// Print the stored form (`sha256:<hex>`) of a key; `-` reads it from stdin.
    Hash { key: String },
}

const DEMO_TENANT: &str = "demo";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Keys(cmd)) => keys(cmd),
        Some(Command::Admin(args)) => admin_cli::run(args),
        Some(Command::Serve(args)) => serve(args),
        None => serve(cli.serve),
    }
}

fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::New { tenant } => {
            let key = ApiKey::generate();
            let digest = key.digest();
            println!("key:    {}", key.expose());
            println!("stored: {digest}");
            println!("key id: {}", digest.key_id());
            println!();
            println!(
                "# Give the key to tenant `{tenant}` once; put only the stored form in the config:"
            );
            println!("[[tenants]]\nid = \"{tenant}\"\nkeys = [\"{digest}\"]");
        }
        KeysCommand::Hash { key } => {
            let key = if key == "-" {
                let mut buf = String::new();
                std::io::stdin().read_to_string(&mut buf)?;
                buf.trim_end_matches(['\n', '\r']).to_string()
            } else {
                key
            };
            println!("{}", ApiKey::from_plaintext(key).digest());
        }
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => GatewayConfig::load(path)?,
        None => demo_config(),
    };
    config.apply_overrides(args.listen, args.model)?;
    config.validate()?;
    gateway::server::run("gateway", config, args.config)
}

/// The embedded default with the `demo` tenant, whose key comes from `GATEWAY_DEMO_KEY` or is
/// generated and printed once.
fn demo_config() -> GatewayConfig {
    let key = match std::env::var("GATEWAY_DEMO_KEY") {
        Ok(key) if !key.is_empty() => {
            println!("demo tenant `{DEMO_TENANT}`: key taken from GATEWAY_DEMO_KEY");
            ApiKey::from_plaintext(key)
        }
        _ => {
            let key = ApiKey::generate();
            println!(
                "demo tenant `{DEMO_TENANT}`: API key {} (shown once)",
                key.expose()
            );
            key
        }
    };
    let mut config = GatewayConfig::default();
    config.tenants.push(TenantConfig::unlimited(
        TenantId::new(DEMO_TENANT).expect("valid tenant id"),
        vec![key.digest().to_string()],
    ));
    config
}

//! Start-up: load the models in the background, bind, serve (HTTP or HTTPS), shut down cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_server::accept::NoDelayAcceptor;
use engines::model_fetch::{default_cache_dir, ensure_model, DEFAULT_MODEL};
use engines::{Engine, LocalEngine, LocalEngineOptions, SyntheticEngine};

use crate::config::{parse_device, GatewayConfig, ModelConfig};
use crate::directory::Directory;
use crate::state::{AppState, Limits, ModelRegistry, ModelState};
use ledger::{Ledger, UsageQuery};
use policies::DailyUsage;

/// Serves until SIGINT or SIGTERM. `keys` is the key store to start with (the configured tenants,
/// or the demo tenant). The line `gateway listening on <scheme>://<addr>` goes to stdout once the
/// socket is bound, so scripts and tests can find an ephemeral port.
pub async fn serve(config: GatewayConfig, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    // rustls needs one process-wide crypto provider when several are compiled in.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let directory = Directory::from_config(&config)?;
    if directory.tenant_key_count() == 0 {
        tracing::warn!("no tenant has a key: every API request will be refused with 401");
    }

    let models = Arc::new(ModelRegistry::default());
    for model in &config.models {
        models.add_loading(&model.id);
        let (registry, model) = (models.clone(), model.clone());
        // Loading reads and re-quantizes weights: CPU work, off the async workers.
        tokio::task::spawn_blocking(move || {
            let state = match load_model(&model) {
                Ok(engine) => {
                    tracing::info!(model = %model.id, "model ready");
                    ModelState::Ready(engine)
                }
                Err(e) => {
                    tracing::error!(model = %model.id, error = %format!("{e:#}"), "model failed to load");
                    ModelState::Failed(format!("{e:#}"))
                }
            };
            registry.set_state(&model.id, state);
        });
    }

    let limits = Limits {
        max_body_bytes: config.server.max_body_bytes,
        request_timeout: Duration::from_secs(config.server.request_timeout_secs),
    };
    let ledger = match config.ledger.enabled {
        true => {
            let path = config.ledger.resolved_path();
            let ledger = Ledger::open_with(&path, config.ledger.durability)?;
            tracing::info!(path = %path.display(), durability = ?config.ledger.durability, "usage ledger open");
            Some(Arc::new(ledger))
        }
        false => {
            tracing::warn!("usage ledger disabled: usage is not recorded durably");
            None
        }
    };
    let state = AppState::new(
        limits,
        models,
        directory,
        ledger.clone(),
        config.telemetry.metrics,
    );
    if let Some(ledger) = &ledger {
        restore_todays_usage(&state, ledger)?;
    }
    // Tenants, keys and limits follow the file without a restart.
    let _watcher = match &config_path {
        Some(path) => {
            #[cfg(unix)]
            tokio::spawn(crate::reload::reload_on_sighup(state.clone(), path.clone()));
            Some(
                crate::reload::watch(state.clone(), path.clone())
                    .context("watching the config file")?,
            )
        }
        None => None,
    };
    let app = crate::routes::router(state).into_make_service();

    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    listener.set_nonblocking(true)?;
    let addr: SocketAddr = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    // Streams are many small writes (one SSE event per token): with Nagle's algorithm on, a
    // token waits for the client's delayed ACK (~40 ms) and tokens arrive in bursts.
    tokio::spawn(shutdown_on_signal(handle.clone()));

    match &config.tls {
        Some(tls) => {
            let rustls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
                .await
                .with_context(|| {
                    format!(
                        "cannot load TLS certificate {} and key {}",
                        tls.cert.display(),
                        tls.key.display()
                    )
                })?;
            announce("https", addr);
            axum_server::from_tcp_rustls(listener, rustls)
                .map(|tls| tls.acceptor(NoDelayAcceptor::new()))
                .handle(handle)
                .serve(app)
                .await?;
        }
        None => {
            announce("http", addr);
            axum_server::from_tcp(listener)
                .acceptor(NoDelayAcceptor::new())
                .handle(handle)
                .serve(app)
                .await?;
        }
    }
    // Requests that ended during the graceful shutdown may have queued records: commit them.
    if let Some(ledger) = ledger {
        tokio::task::spawn_blocking(move || ledger.close()).await?;
    }
    Ok(())
}

/// The daily budget counts what each tenant used since midnight UTC, also across restarts: the
/// ledger has it.
fn restore_todays_usage(state: &AppState, ledger: &Ledger) -> anyhow::Result<()> {
    // The same day the quota book counts, so the restored usage and the live counters agree.
    let midnight = policies::utc_day() as i64 * 86_400_000;
    let rows = ledger.usage(&UsageQuery {
        from_ms: Some(midnight),
        ..Default::default()
    })?;
    let directory = state.directory();
    for row in rows {
        if let Some(tenant) = directory
            .tenants
            .iter()
            .find(|t| t.id.as_str() == row.tenant)
        {
            state.quotas.restore_usage(
                tenant,
                DailyUsage {
                    requests: row.requests,
                    prompt_tokens: row.prompt_tokens,
                    completion_tokens: row.completion_tokens,
                    rejections: 0,
                },
            );
            tracing::info!(tenant = %row.tenant, tokens = row.total_tokens, "restored today's usage from the ledger");
        }
    }
    Ok(())
}

fn announce(scheme: &str, addr: SocketAddr) {
    use std::io::Write;
    println!("gateway listening on {scheme}://{addr}");
    let _ = std::io::stdout().flush();
}

fn load_model(model: &ModelConfig) -> anyhow::Result<Arc<dyn Engine>> {
    if let Some(synthetic) = &model.synthetic {
        tracing::warn!(model = %model.id, "synthetic model: a benchmark tool, its output is meaningless");
        return Ok(Arc::new(SyntheticEngine::start(
            &model.id,
            synthetic.options(),
        )?));
    }
    let path = match &model.path {
        Some(path) => path.clone(),
        None => ensure_model(&DEFAULT_MODEL, &default_cache_dir())?,
    };
    let device = parse_device(&model.device).map_err(anyhow::Error::msg)?;
    tracing::info!(model = %model.id, path = %path.display(), %device, "loading model");
    let options = LocalEngineOptions {
        model_path: path,
        device,
        weight_format: model.weights.into(),
        core: model.core(),
    };
    Ok(Arc::new(LocalEngine::start(&model.id, &options)?))
}

async fn shutdown_on_signal(handle: axum_server::Handle) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing in-flight requests (30 s at most)");
    handle.graceful_shutdown(Some(Duration::from_secs(30)));
}

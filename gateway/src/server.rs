//! Start-up: load the models in the background, bind, serve (HTTP or HTTPS), shut down cleanly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_server::accept::NoDelayAcceptor;
use engine_api::{Engine, SyntheticEngine};
use local_engine::{LocalEngine, LocalEngineOptions};
use model_fetch::{default_cache_dir, ensure_model, DEFAULT_MODEL};
use remote_engine::{RemoteClient, RemoteEngine, RemoteOptions};
use routing::{ModelRouter, Pool, PoolKind, Probe, Replica};

use crate::config::{
    parse_device, GatewayConfig, ModelConfig, ModelKind, PoolConfig, PoolKindConfig,
};
use crate::directory::Directory;
use crate::first_request::FirstByteAcceptor;
use crate::models::{Embedder, ModelRegistry, ModelState, RemoteEmbedder};
use crate::state::{AppState, Limits};
use ledger::{Ledger, UsageQuery};
use policies::DailyUsage;

/// What both binaries' `main` do: set the engines' threads, start the runtime and telemetry,
/// and serve as `name` until a signal.
pub fn run(
    name: &'static str,
    config: GatewayConfig,
    config_path: Option<PathBuf>,
) -> anyhow::Result<()> {
    // Before any other thread starts: it sets the environment candle's kernels read.
    local_engine::configure_threads(config.engine.threads);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = config.server.worker_threads {
        runtime.worker_threads(workers.get());
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async {
        // Inside the runtime: the gRPC trace exporter needs one. Dropped last: flushes spans.
        let _telemetry = crate::telemetry::init(&config.telemetry)?;
        serve_as(name, config, config_path).await
    })
}

/// Serves until SIGINT or SIGTERM. `keys` is the key store to start with (the configured tenants,
/// or the demo tenant). The line `gateway listening on <scheme>://<addr>` goes to stdout once the
/// socket is bound, so scripts and tests can find an ephemeral port.
pub async fn serve(config: GatewayConfig, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    serve_as("gateway", config, config_path).await
}

/// [`serve`], announcing itself as `name` (the `engine-worker` runs the same server).
pub async fn serve_as(
    name: &'static str,
    config: GatewayConfig,
    config_path: Option<PathBuf>,
) -> anyhow::Result<()> {
    // rustls needs one process-wide crypto provider when several are compiled in.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let directory = Directory::from_config(&config)?;
    let (control_plane, directory) = match config.control_plane.enabled {
        true => {
            let (sync, directory) = crate::store_sync::StoreSync::open(&config, directory).await?;
            (Some(sync), directory)
        }
        false => (None, directory),
    };
    if directory.tenant_key_count() == 0 {
        tracing::warn!("no tenant has a key: every API request will be refused with 401");
    }

    let models = Arc::new(ModelRegistry::default());
    let shared_config = Arc::new(config.clone());
    // One connection pool per remote pool, with that pool's connect timeout, shared by the
    // pool's replicas of every model.
    let clients: Arc<HashMap<String, RemoteClient>> = Arc::new(
        config
            .pools
            .iter()
            .filter(|p| p.kind == PoolKindConfig::Remote)
            .map(|p| {
                let timeout = Duration::from_millis(p.connect_timeout_ms);
                (p.name.clone(), RemoteClient::new(timeout))
            })
            .collect(),
    );
    for model in &config.models {
        models.add_loading(&model.id);
        let (registry, model) = (models.clone(), model.clone());
        let (config, clients) = (shared_config.clone(), clients.clone());
        let runtime = tokio::runtime::Handle::current();
        // Loading reads and re-quantizes weights: CPU work, off the async workers.
        tokio::task::spawn_blocking(move || {
            let loaded = match model.kind {
                ModelKind::Embedding => match model.pools.is_empty() {
                    true => load_embedding(&model)
                        .map(|m| ModelState::Embeddings(Arc::new(Embedder::Local(Arc::new(m))))),
                    false => remote_embedder(&config, &model, &clients)
                        .map(|e| ModelState::Embeddings(Arc::new(Embedder::Remote(Arc::new(e))))),
                },
                ModelKind::Gguf | ModelKind::Synthetic => build_router(&config, &model, &clients)
                    .map(|router| {
                        let interval = Duration::from_millis(config.routing.health_interval_ms);
                        routing::spawn_health_checks(vec![router.clone()], interval, &runtime);
                        ModelState::Ready(router)
                    }),
            };
            let state = match loaded {
                Ok(state) => {
                    tracing::info!(model = %model.id, "model ready");
                    state
                }
                Err(e) => {
                    tracing::error!(model = %model.id, error = %format!("{e:#}"), "model failed to load");
                    ModelState::Failed(format!("{e:#}"))
                }
            };
            registry.set_state(&model.id, state);
            crate::memory::give_back_now();
        });
    }

    let limits = Limits {
        max_body_bytes: config.server.max_body_bytes,
        request_timeout: Duration::from_secs(config.server.request_timeout_secs),
        cors_origins: config.server.cors_origins.clone(),
        max_prompts_per_request: config.server.max_prompts_per_request,
        max_prompt_tokens_per_request: config.server.max_prompt_tokens_per_request,
        admin_requests_per_minute: config.server.admin_requests_per_minute,
        batches: config.batches.clone(),
        console: config.console.clone(),
        tls: config.tls.is_some(),
        adapter_registry: config.adapter_registry.clone(),
    };
    let ledger = match config.ledger.enabled {
        true => match config.ledger.postgres_url() {
            Some(url) => {
                // The PostgreSQL client blocks (it runs its own runtime): not on this one's
                // threads.
                let ledger = tokio::task::spawn_blocking(move || Ledger::connect(&url))
                    .await
                    .context("connecting the usage ledger")??;
                tracing::info!("usage ledger in PostgreSQL, shared by every replica");
                Some(Arc::new(ledger))
            }
            None => {
                let path = config.ledger.resolved_path();
                let ledger = Ledger::open_with(&path, config.ledger.durability)?;
                tracing::info!(path = %path.display(), durability = ?config.ledger.durability, "usage ledger open");
                Some(Arc::new(ledger))
            }
        },
        false => {
            tracing::warn!("usage ledger disabled: usage is not recorded durably");
            None
        }
    };
    let quotas: Arc<dyn policies::QuotaStore> = match config.quotas.redis() {
        Some(settings) => {
            tracing::info!(
                namespace = %settings.namespace,
                on_unavailable = ?settings.on_unavailable,
                lease_secs = settings.lease.as_secs(),
                "tenant limits are counted in Redis, shared by every replica"
            );
            Arc::new(redis_quotas::RedisQuotas::new(settings)?)
        }
        None => Arc::new(policies::QuotaBook::default()),
    };
    let state = AppState::new(
        limits,
        models,
        directory,
        ledger.clone(),
        quotas,
        config.telemetry.metrics,
    );
    if let Some(sync) = control_plane {
        sync.spawn(state.current_directory().clone(), state.requests.clone());
        let _ = state.control_plane.set(sync);
        // Batches live in the store: every replica with one runs them.
        crate::routes::spawn_batch_runner(state.clone());
    }
    // Engines let go of adapters no longer served (deleted, or gone from a reloaded file).
    crate::routes::spawn_adapter_janitor(state.clone());
    if let Some(ledger) = &ledger {
        restore_todays_usage(&state, ledger).await?;
    }
    // Tenants, keys and limits follow the file without a restart.
    let _watcher = match &config_path {
        Some(path) => {
            let file = crate::reload::ConfigFile::new(path.clone());
            #[cfg(unix)]
            tokio::spawn(crate::reload::reload_on_sighup(state.clone(), file.clone()));
            Some(crate::reload::watch(state.clone(), file).context("watching the config file")?)
        }
        None => None,
    };
    let refused = state.requests.connections_refused.clone();
    // With the peer's address: the audit log records where each admin write came from.
    let app = crate::routes::router(state).into_make_service_with_connect_info::<SocketAddr>();

    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    listener.set_nonblocking(true)?;
    let addr: SocketAddr = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    // Streams are many small writes (one SSE event per token): with Nagle's algorithm on, a
    // token waits for the client's delayed ACK (~40 ms) and tokens arrive in bursts.
    tokio::spawn(shutdown_on_signal(handle.clone()));
    crate::memory::spawn_trimming(crate::memory::TRIM_INTERVAL);

    let (first_byte, cap) = (
        Duration::from_secs(config.server.header_read_timeout_secs),
        config.server.connection_cap(),
    );
    tracing::info!(max_connections = cap, "connection cap");
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
            announce(name, "https", addr);
            let mut server = axum_server::from_tcp_rustls(listener, rustls)
                .map(|tls| {
                    // A client that never finishes its handshake is closed as one that never
                    // sends its request head, and within rustls's own 10 s at most.
                    let handshake = first_byte.min(Duration::from_secs(10));
                    let tls = tls
                        .handshake_timeout(handshake)
                        .acceptor(NoDelayAcceptor::new());
                    FirstByteAcceptor::new(tls, first_byte, cap, refused.clone())
                })
                .handle(handle);
            connection_timeouts(server.http_builder(), &config.server);
            server.serve(app).await?;
        }
        None => {
            announce(name, "http", addr);
            let mut server = axum_server::from_tcp(listener)
                .acceptor(FirstByteAcceptor::new(
                    NoDelayAcceptor::new(),
                    first_byte,
                    cap,
                    refused.clone(),
                ))
                .handle(handle);
            connection_timeouts(server.http_builder(), &config.server);
            server.serve(app).await?;
        }
    }
    // Requests that ended during the graceful shutdown may have queued records: commit them.
    if let Some(ledger) = ledger {
        tokio::task::spawn_blocking(move || ledger.close()).await?;
    }
    Ok(())
}

/// Connections that send nothing are closed: a request head must arrive within
/// `header_read_timeout_secs` of the connection opening or of the previous response (so an idle
/// keep-alive connection, a slowloris client or a TLS connection idle after its handshake is
/// closed too); HTTP/2 connections are pinged and closed when the pings go unanswered. axum-server
/// sets hyper up without a timer, which leaves all of this off.
fn connection_timeouts(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    server: &crate::config::ServerConfig,
) {
    let header_read = Duration::from_secs(server.header_read_timeout_secs);
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(header_read)
        .keep_alive_timeout(header_read);
}

/// The daily budget counts what each tenant used since midnight UTC, also across restarts: the
/// ledger has it.
async fn restore_todays_usage(state: &AppState, ledger: &Arc<Ledger>) -> anyhow::Result<()> {
    // The same day the quota book counts, so the restored usage and the live counters agree.
    let midnight = policies::utc_day() as i64 * 86_400_000;
    let ledger = ledger.clone();
    let rows = tokio::task::spawn_blocking(move || {
        ledger.usage(&UsageQuery {
            from_ms: Some(midnight),
            ..Default::default()
        })
    })
    .await??;
    let directory = state.directory();
    for row in rows {
        if let Some(tenant) = directory.tenants.iter().find(|t| t.id == row.tenant) {
            state
                .quotas
                .restore_usage(
                    tenant,
                    DailyUsage {
                        requests: row.requests,
                        prompt_tokens: row.prompt_tokens,
                        completion_tokens: row.completion_tokens,
                        rejections: 0,
                    },
                )
                .await;
            tracing::info!(tenant = %row.tenant, tokens = row.total_tokens, "restored today's usage from the ledger");
        }
    }
    Ok(())
}

fn announce(name: &str, scheme: &str, addr: SocketAddr) {
    use std::io::Write;
    println!("{name} listening on {scheme}://{addr}");
    println!("  try: curl {scheme}://{addr}/v1/models -H \"Authorization: Bearer $YOUR_KEY\"");
    let _ = std::io::stdout().flush();
}

/// Every pool of `model` with its replicas: local engines loaded on their devices, remote
/// upstreams with their health checks.
/// An embedding model: its directory, or the embedded one fetched into the cache.
fn load_embedding(model: &ModelConfig) -> anyhow::Result<embeddings::EmbeddingModel> {
    let dir = match &model.path {
        Some(dir) => dir.clone(),
        None => model_fetch::ensure_bundle(
            &model_fetch::EMBEDDING_MODEL,
            &model_fetch::default_cache_dir(),
        )?,
    };
    Ok(embeddings::EmbeddingModel::load(
        &dir,
        embeddings::EmbeddingOptions::default(),
    )?)
}

/// An embedding model served by its (remote) pools' replicas.
fn remote_embedder(
    config: &GatewayConfig,
    model: &ModelConfig,
    clients: &HashMap<String, RemoteClient>,
) -> anyhow::Result<RemoteEmbedder> {
    let mut replicas = Vec::new();
    for pool in config.pools_of(model) {
        for url in &pool.urls {
            let options = remote_options(model, &pool, url)?;
            let engine = RemoteEngine::new(&model.id, options, clients[&pool.name].clone())?;
            replicas.push((
                Arc::from(pool.name.as_str()),
                Arc::from(url.as_str()),
                Arc::new(engine),
            ));
        }
    }
    tracing::info!(model = %model.id, replicas = replicas.len(), "remote embedding model ready");
    Ok(RemoteEmbedder::new(replicas))
}

fn build_router(
    config: &GatewayConfig,
    model: &ModelConfig,
    clients: &HashMap<String, RemoteClient>,
) -> anyhow::Result<Arc<ModelRouter>> {
    let mut pools = Vec::new();
    for pool in config.pools_of(model) {
        let breaker = pool.breaker();
        let stall = pool.stall_timeouts();
        let patience = Duration::from_secs(config.server.request_timeout_secs);
        if stall.first_token.is_some_and(|limit| limit >= patience) {
            tracing::warn!(pool = %pool.name, "first_token_timeout_ms is not below [server] request_timeout_secs: requests on a stalled replica time out before they can fail over");
        }
        let (kind, replicas) = match pool.kind {
            PoolKindConfig::Local => {
                let replicas = pool
                    .devices
                    .iter()
                    .map(|device| {
                        let engine = load_local(model, device)?;
                        Ok(Arc::new(Replica::new(
                            device.as_str(),
                            engine,
                            None,
                            breaker,
                            stall,
                        )))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                (PoolKind::Local, replicas)
            }
            PoolKindConfig::Remote => {
                let probe_timeout = Duration::from_millis(config.routing.health_timeout_ms);
                let replicas = pool
                    .urls
                    .iter()
                    .map(|url| {
                        let options = remote_options(model, &pool, url)?;
                        let engine = Arc::new(RemoteEngine::new(
                            &model.id,
                            options,
                            clients[&pool.name].clone(),
                        )?);
                        let checked = engine.clone();
                        let probe: Probe = Arc::new(move || {
                            let engine = checked.clone();
                            Box::pin(async move { engine.probe(probe_timeout).await })
                        });
                        Ok(Arc::new(Replica::new(
                            url.as_str(),
                            engine,
                            Some(probe),
                            breaker,
                            stall,
                        )))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                (PoolKind::Remote, replicas)
            }
        };
        tracing::info!(model = %model.id, pool = %pool.name, replicas = replicas.len(), "pool ready");
        pools.push(Arc::new(Pool {
            name: pool.name.as_str().into(),
            kind,
            replicas,
            max_outstanding_tokens: pool.max_outstanding_tokens,
        }));
    }
    let tiers: Vec<(String, Vec<String>)> = model
        .tiers
        .iter()
        .map(|(tier, pools)| (tier.clone(), pools.clone()))
        .collect();
    let served_locally = pools.iter().any(|p| p.kind == PoolKind::Local);
    let router = ModelRouter::new(pools, &model.pools, &tiers)
        .with_sampling_defaults(model.sampling_defaults(served_locally));
    Ok(Arc::new(match model.saturated_wait() {
        Some(settings) => router.with_waiting_room(settings),
        None => router,
    }))
}

fn remote_options(
    model: &ModelConfig,
    pool: &PoolConfig,
    url: &str,
) -> anyhow::Result<RemoteOptions> {
    let api_key = match &pool.api_key_env {
        Some(var) => Some(std::env::var(var).with_context(|| {
            format!(
                "pool `{}`: environment variable `{var}` (api_key_env) is not set",
                pool.name
            )
        })?),
        None => None,
    };
    Ok(RemoteOptions {
        base_url: url.to_string(),
        upstream_model: model
            .upstream_model
            .clone()
            .unwrap_or_else(|| model.id.clone()),
        api_key,
        context_length: model.context_length.unwrap_or(8192),
        response_timeout: Duration::from_millis(pool.response_timeout_ms),
        idle_timeout: Duration::from_millis(pool.idle_timeout_ms),
    })
}

/// One local engine of `model` on `device`.
fn load_local(model: &ModelConfig, device: &str) -> anyhow::Result<Arc<dyn Engine>> {
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
    let device = parse_device(device).map_err(anyhow::Error::msg)?;
    tracing::info!(model = %model.id, path = %path.display(), %device, "loading model");
    let options = LocalEngineOptions {
        model_path: path,
        device,
        weight_format: model.weights.into(),
        core: model.core(device),
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

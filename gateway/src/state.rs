//! What every handler can reach: the models, the key store, the server limits.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ledger::Ledger;
use policies::QuotaStore;

use crate::directory::{CurrentDirectory, Directory};
use crate::metrics::RequestMetrics;
use crate::models::ModelRegistry;
use crate::store_sync::StoreSync;

/// Limits applied at the edge.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Longest a request may take to its response head (504 beyond).
    pub request_timeout: Duration,
    /// Origins allowed by CORS (empty: CORS off).
    pub cors_origins: Vec<String>,
    /// Most prompts per request (400 beyond).
    pub max_prompts_per_request: usize,
    /// Most prompt tokens per request, over its prompts (400 beyond).
    pub max_prompt_tokens_per_request: u64,
    /// Requests per minute of one admin key to `/admin/*` (0: unlimited).
    pub admin_requests_per_minute: u32,
    /// `[batches]`: files' and batches' limits (`max_file_bytes` is the upload route's body
    /// limit).
    pub batches: crate::config::BatchesConfig,
    /// `[console]`: the web console's sessions.
    pub console: crate::config::ConsoleConfig,
    /// Whether the server speaks TLS (the console's cookies are then `Secure`).
    pub tls: bool,
    /// `[adapter_registry]`: how adapters are registered through the admin API (the adapters
    /// served are the directory's).
    pub adapter_registry: crate::config::AdapterRegistryConfig,
}

/// Shared state of the server; cheap to clone (one reference count: every layer and handler
/// that takes the state clones it, per request).
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

/// What [`AppState`] shares (reached through it).
pub struct SharedState {
    /// Limits applied at the edge.
    pub limits: Limits,
    /// Every configured model and its state.
    pub models: Arc<ModelRegistry>,
    /// Every Prometheus series, for `/metrics`.
    pub metrics: Arc<prometheus_client::registry::Registry>,
    /// The per-request series (also registered in `metrics`).
    pub requests: Arc<RequestMetrics>,
    /// Each tenant's live quota counters: in process, or in Redis for a fleet.
    pub quotas: Arc<dyn QuotaStore>,
    /// The durable usage ledger (`None` when `[ledger] enabled = false`).
    pub ledger: Option<Arc<Ledger>>,
    /// The control-plane store and its cache's upkeep (set once at start-up when
    /// `[control_plane] enabled`).
    pub control_plane: OnceLock<Arc<StoreSync>>,
    directory: Arc<CurrentDirectory>,
}

impl AppState {
    /// The state of a server with these parts; the metrics registry is built here.
    pub fn new(
        limits: Limits,
        models: Arc<ModelRegistry>,
        directory: Directory,
        ledger: Option<Arc<Ledger>>,
        quotas: Arc<dyn QuotaStore>,
        record_metrics: bool,
    ) -> Self {
        let requests = Arc::new(RequestMetrics::new(record_metrics));
        let metrics = Arc::new(crate::metrics::registry(
            models.clone(),
            &requests,
            quotas.clone(),
        ));
        Self(Arc::new(SharedState {
            limits,
            models,
            metrics,
            requests,
            quotas,
            ledger,
            control_plane: OnceLock::new(),
            directory: Arc::new(CurrentDirectory::new(directory)),
        }))
    }

    /// The current tenants and keys (a snapshot: a reload swaps in a new one).
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.get()
    }

    /// Replaces tenants and keys; requests already admitted keep what they were admitted with.
    pub fn replace_directory(&self, directory: Directory) {
        self.directory.replace(directory);
    }

    /// The directory's slot itself, for what keeps it up to date (the control-plane store's
    /// sync) without the rest of the state.
    pub fn current_directory(&self) -> &Arc<CurrentDirectory> {
        &self.directory
    }

    /// The control-plane store, when one is in force.
    pub fn store(&self) -> Option<&Arc<StoreSync>> {
        self.control_plane.get()
    }
}

impl Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

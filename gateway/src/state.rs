//! What every handler can reach: the models, the key store, the server limits.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ledger::Ledger;
use policies::QuotaBook;
use routing::ModelRouter;

use crate::directory::Directory;
use crate::metrics::RequestMetrics;

/// Limits applied at the edge.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

/// Shared state of the server; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub limits: Limits,
    pub models: Arc<ModelRegistry>,
    pub metrics: Arc<prometheus_client::registry::Registry>,
    /// The per-request series (also registered in `metrics`).
    pub requests: Arc<RequestMetrics>,
    pub quotas: Arc<QuotaBook>,
    /// The durable usage ledger (`None` when `[ledger] enabled = false`).
    pub ledger: Option<Arc<Ledger>>,
    directory: Arc<RwLock<Arc<Directory>>>,
}

impl AppState {
    pub fn new(
        limits: Limits,
        models: Arc<ModelRegistry>,
        directory: Directory,
        ledger: Option<Arc<Ledger>>,
        record_metrics: bool,
    ) -> Self {
        let requests = Arc::new(RequestMetrics::new(record_metrics));
        let metrics = Arc::new(crate::metrics::registry(models.clone(), &requests));
        Self {
            limits,
            models,
            metrics,
            requests,
            quotas: Arc::new(QuotaBook::default()),
            ledger,
            directory: Arc::new(RwLock::new(Arc::new(directory))),
        }
    }

    /// The current tenants and keys (a snapshot: a reload swaps in a new one).
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.read().expect("directory lock").clone()
    }

    /// Replaces tenants and keys; requests already admitted keep what they were admitted with.
    pub fn replace_directory(&self, directory: Directory) {
        *self.directory.write().expect("directory lock") = Arc::new(directory);
    }
}

/// The state of one configured model.
#[derive(Clone)]
pub enum ModelState {
    Loading,
    Ready(Arc<ModelRouter>),
    Failed(String),
}

struct ModelSlot {
    id: String,
    /// Unix time the model was registered (OpenAI's `created`).
    created: u64,
    state: ModelState,
}

/// Every configured model and whether it can serve yet.
#[derive(Default)]
pub struct ModelRegistry {
    slots: RwLock<Vec<ModelSlot>>,
}

impl ModelRegistry {
    /// Registers a model as loading.
    pub fn add_loading(&self, id: &str) {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.slots.write().expect("registry lock").push(ModelSlot {
            id: id.to_string(),
            created,
            state: ModelState::Loading,
        });
    }

    pub fn set_state(&self, id: &str, state: ModelState) {
        let mut slots = self.slots.write().expect("registry lock");
        if let Some(slot) = slots.iter_mut().find(|s| s.id == id) {
            slot.state = state;
        }
    }

    /// `None` if no such model is configured.
    pub fn get(&self, id: &str) -> Option<ModelState> {
        let slots = self.slots.read().expect("registry lock");
        slots.iter().find(|s| s.id == id).map(|s| s.state.clone())
    }

    /// `(id, created, state)` of every model, in configuration order.
    pub fn list(&self) -> Vec<(String, u64, ModelState)> {
        let slots = self.slots.read().expect("registry lock");
        slots
            .iter()
            .map(|s| (s.id.clone(), s.created, s.state.clone()))
            .collect()
    }

    /// True once every configured model is ready.
    pub fn all_ready(&self) -> bool {
        let slots = self.slots.read().expect("registry lock");
        slots
            .iter()
            .all(|s| matches!(s.state, ModelState::Ready(_)))
    }
}

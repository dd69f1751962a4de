//! The configured models and whether each can serve yet (loading, ready with its router, or
//! failed with the reason).

use std::sync::RwLock;

use routing::ModelRouter;
use std::sync::Arc;

/// The state of one configured model.
#[derive(Clone)]
pub enum ModelState {
    /// Its weights are being read (at start-up).
    Loading,
    /// It serves, through this router over its pools.
    Ready(Arc<ModelRouter>),
    /// An embedding model: it serves `/v1/embeddings`.
    Embeddings(Arc<Embedder>),
    /// It could not be loaded; the reason, for `/ready` and 500s.
    Failed(String),
}

/// What computes an embedding model's vectors.
pub enum Embedder {
    /// The model in this process.
    Local(Arc<embeddings::EmbeddingModel>),
    /// Upstreams' `/v1/embeddings` (an `engine-worker` or any OpenAI-compatible server).
    Remote(Arc<RemoteEmbedder>),
}

/// An embedding model served by the replicas of remote pools: requests go round the replicas,
/// and one that cannot serve (unreachable, 5xx, 429) passes the request to the next.
pub struct RemoteEmbedder {
    /// `(pool, replica URL, engine)` of every replica, in configuration order.
    pub replicas: Vec<(Arc<str>, Arc<str>, Arc<remote_engine::RemoteEngine>)>,
    next: std::sync::atomic::AtomicUsize,
}

impl RemoteEmbedder {
    /// An embedder over `replicas`.
    pub fn new(replicas: Vec<(Arc<str>, Arc<str>, Arc<remote_engine::RemoteEngine>)>) -> Self {
        Self {
            replicas,
            next: Default::default(),
        }
    }

    /// The vectors of `input` (as the client sent it), the pool and replica that made them.
    pub async fn embed(
        &self,
        input: &serde_json::Value,
        dimensions: Option<u64>,
    ) -> Result<(remote_engine::RemoteEmbeddings, Arc<str>, Arc<str>), remote_engine::UpstreamError>
    {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut last = remote_engine::UpstreamError::Unavailable("no replica configured".into());
        for k in 0..self.replicas.len() {
            let (pool, url, engine) = &self.replicas[(start + k) % self.replicas.len()];
            match engine.embeddings(input, dimensions).await {
                Ok(vectors) => return Ok((vectors, pool.clone(), url.clone())),
                Err(refused @ remote_engine::UpstreamError::Refused(_)) => return Err(refused),
                Err(unavailable) => {
                    tracing::warn!(replica = %url, error = ?unavailable, "embedding replica failed; trying the next");
                    last = unavailable;
                }
            }
        }
        Err(last)
    }
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

    /// Moves a registered model to `state`.
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
            .all(|s| matches!(s.state, ModelState::Ready(_) | ModelState::Embeddings(_)))
    }
}

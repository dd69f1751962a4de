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
    Embeddings(Arc<engines::EmbeddingModel>),
    /// It could not be loaded; the reason, for `/ready` and 500s.
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

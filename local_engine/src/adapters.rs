//! The LoRA adapters a model has loaded: each read and checked against the model on the first
//! request that names it, numbered for the request core (an [`AdapterSlot`]), kept within a
//! memory budget. Unused adapters are evicted least recently used first; an adapter a sequence
//! still runs with is pinned (its sequence's decoding state holds it) and never evicted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use engine_api::{AdapterRef, EngineError};
use models::{LoraAdapter, ModelConfig};
use request_core::AdapterSlot;

/// Bytes of adapters a model keeps loaded by default.
pub const DEFAULT_BUDGET_BYTES: usize = 1 << 30;

struct Loaded {
    /// The file it was read from: a registration of the same id with another file (a new
    /// upload after a delete) is another adapter.
    path: PathBuf,
    slot: AdapterSlot,
    adapter: Arc<LoraAdapter>,
    last_used: Instant,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<String, Loaded>,
    by_slot: HashMap<AdapterSlot, Arc<LoraAdapter>>,
    next_slot: u64,
}

/// One model's loaded adapters.
pub struct Adapters {
    base: ModelConfig,
    budget_bytes: usize,
    table: Mutex<Table>,
}

impl Adapters {
    /// None loaded yet, for a model of shape `base`, within `budget_bytes`.
    pub fn new(base: ModelConfig, budget_bytes: usize) -> Self {
        Self {
            base,
            budget_bytes,
            table: Mutex::default(),
        }
    }

    /// The adapter `adapter` names, loaded now if it is not yet: its slot, and the pin its
    /// sequence holds while it runs. A file that is not an adapter for this model is the
    /// request's fault (`InvalidInput`, naming why).
    pub fn acquire(
        &self,
        adapter: &AdapterRef,
    ) -> Result<(AdapterSlot, Arc<LoraAdapter>), EngineError> {
        {
            let mut table = self.table.lock().expect("adapter table");
            match table.by_id.get_mut(&adapter.id) {
                Some(loaded) if loaded.path == adapter.path => {
                    loaded.last_used = Instant::now();
                    return Ok((loaded.slot, loaded.adapter.clone()));
                }
                Some(_) => Self::remove(&mut table, &adapter.id),
                None => {}
            }
        }
        // Read outside the lock: other requests go on meanwhile.
        let read = self
            .read(&adapter.path)
            .map_err(|why| EngineError::InvalidInput(format!("adapter `{}`: {why}", adapter.id)))?;
        let mut table = self.table.lock().expect("adapter table");
        if let Some(loaded) = table.by_id.get(&adapter.id) {
            if loaded.path == adapter.path {
                // Loaded by another request meanwhile.
                return Ok((loaded.slot, loaded.adapter.clone()));
            }
            Self::remove(&mut table, &adapter.id);
        }
        let loaded = Arc::new(read);
        self.make_room(&mut table, loaded.bytes());
        let slot = AdapterSlot(table.next_slot);
        table.next_slot += 1;
        table.by_slot.insert(slot, loaded.clone());
        table.by_id.insert(
            adapter.id.clone(),
            Loaded {
                path: adapter.path.clone(),
                slot,
                adapter: loaded.clone(),
                last_used: Instant::now(),
            },
        );
        Ok((slot, loaded))
    }

    /// The adapter in `slot`, if loaded.
    pub fn get(&self, slot: AdapterSlot) -> Option<Arc<LoraAdapter>> {
        self.table
            .lock()
            .expect("adapter table")
            .by_slot
            .get(&slot)
            .cloned()
    }

    /// Reads and checks the adapter file at `path` without loading it: its rank.
    pub fn check(&self, path: &Path) -> Result<usize, EngineError> {
        Ok(self.read(path).map_err(EngineError::InvalidInput)?.rank())
    }

    fn read(&self, path: &Path) -> Result<LoraAdapter, String> {
        let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        LoraAdapter::read(&mut file, &self.base).map_err(|e| e.to_string())
    }

    /// Unloads adapter `id` (deleted): sequences running with it finish with their pin.
    pub fn unload(&self, id: &str) {
        Self::remove(&mut self.table.lock().expect("adapter table"), id);
    }

    fn remove(table: &mut Table, id: &str) {
        if let Some(loaded) = table.by_id.remove(id) {
            table.by_slot.remove(&loaded.slot);
        }
    }

    /// Ids of the adapters loaded now.
    pub fn loaded(&self) -> Vec<String> {
        let table = self.table.lock().expect("adapter table");
        let mut ids: Vec<String> = table.by_id.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Evicts unpinned adapters, least recently used first, until `incoming` more bytes fit.
    fn make_room(&self, table: &mut Table, incoming: usize) {
        loop {
            let used: usize = table.by_id.values().map(|l| l.adapter.bytes()).sum();
            if used + incoming <= self.budget_bytes {
                return;
            }
            // Pinned: a sequence's decoding holds a third reference beside the two maps'.
            let evictable = table
                .by_id
                .iter()
                .filter(|(_, l)| Arc::strong_count(&l.adapter) <= 2)
                .min_by_key(|(_, l)| l.last_used)
                .map(|(id, _)| id.clone());
            let Some(id) = evictable else {
                // Everything loaded is in use: go over the budget rather than fail a request.
                return;
            };
            if let Some(loaded) = table.by_id.remove(&id) {
                table.by_slot.remove(&loaded.slot);
            }
        }
    }
}

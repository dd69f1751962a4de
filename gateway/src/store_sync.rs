//! Keeps this replica's [`Directory`] in step with the control-plane store: seeds an empty store
//! from the configuration file at start, polls the store's version (every write bumps it) and
//! swaps in a new directory when it moved, and writes keys' last-use times in batches. The store
//! is never read per request; while it cannot be reached the replica serves the last directory it
//! built, and writes through the admin API fail with 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use control_plane::{ControlPlane, Snapshot, StoreError};

use crate::config::GatewayConfig;
use crate::directory::{CurrentDirectory, Directory};

/// The store, and what this replica last took from it.
pub struct StoreSync {
    store: Arc<ControlPlane>,
    /// The store version the directory in force was built from.
    applied: AtomicI64,
    /// Orders swaps: an older snapshot never replaces a newer one.
    applying: Mutex<()>,
    /// Whether the last call to the store succeeded.
    available: AtomicBool,
    /// Keys used since the last flush: key id -> Unix ms.
    last_used: Mutex<HashMap<String, i64>>,
    poll_interval: Duration,
    flush_interval: Duration,
    /// ISO 4217 code of prices and costs.
    currency: String,
}

impl StoreSync {
    /// Opens the store `[control_plane]` names, seeds it from the file's `[[tenants]]` when it
    /// holds no tenant yet (warning that the file's tenants are ignored when it does), and
    /// returns it with the directory to start with.
    pub async fn open(
        config: &GatewayConfig,
        from_file: Directory,
    ) -> anyhow::Result<(Arc<Self>, Directory)> {
        let settings = config.control_plane.clone();
        let seeds = config.seed_tenants()?;
        let file_tenants = config.tenants.len();
        let (store, seeded, snapshot) = tokio::task::spawn_blocking(move || {
            let store = match settings.postgres_url() {
                Some(url) => ControlPlane::connect_postgres(&url)?,
                None => ControlPlane::open_sqlite(&settings.resolved_path())?,
            };
            let seeded = store.seed(&seeds)?;
            let snapshot = store.snapshot()?;
            Ok::<_, StoreError>((store, seeded, snapshot))
        })
        .await?
        .context("opening the control-plane store")?;
        match (seeded, file_tenants) {
            (true, n) => tracing::info!(
                store = store.kind(),
                tenants = n,
                "control-plane store seeded from the configuration file's [[tenants]]; from now on it is the source of tenants and keys"
            ),
            (false, 0) => {}
            (false, n) => tracing::warn!(
                store = store.kind(),
                ignored = n,
                "the configuration file's [[tenants]] are ignored: the control-plane store holds the tenants (one source of truth); change them through /admin or `gateway admin`"
            ),
        }
        let snapshot = Arc::new(snapshot);
        let directory = from_file.with_store(snapshot.clone())?;
        tracing::info!(
            store = store.kind(),
            version = snapshot.version,
            tenants = directory.tenants.len(),
            keys = directory.tenant_key_count(),
            "tenants and keys from the control-plane store"
        );
        let sync = Arc::new(Self {
            store: Arc::new(store),
            applied: AtomicI64::new(snapshot.version),
            applying: Mutex::new(()),
            available: AtomicBool::new(true),
            last_used: Mutex::new(HashMap::new()),
            poll_interval: Duration::from_millis(config.control_plane.poll_interval_ms.max(50)),
            flush_interval: Duration::from_secs(config.control_plane.last_used_flush_secs.max(1)),
            currency: config.control_plane.currency.clone(),
        });
        Ok((sync, directory))
    }

    /// The currency of prices and costs (ISO 4217).
    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.store.kind()
    }

    /// Whether the last call to the store succeeded.
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// The store version in force here.
    pub fn version(&self) -> i64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Notes that `key_id` was used now (written to the store at the next flush).
    pub fn touch(&self, key_id: &str) {
        let now = control_plane::now_ms();
        let mut used = self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        match used.get_mut(key_id) {
            Some(at) => *at = now,
            None => {
                used.insert(key_id.to_string(), now);
            }
        }
    }

    /// Runs `call` on the store, on a blocking thread; notes whether the store answered.
    pub async fn call<T: Send + 'static>(
        &self,
        call: impl FnOnce(&ControlPlane) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || call(&store))
            .await
            .map_err(|e| StoreError::Unavailable(format!("the store call panicked: {e}")))?;
        self.note(&result);
        result
    }

    fn note<T>(&self, result: &Result<T, StoreError>) {
        let reachable = !matches!(result, Err(StoreError::Unavailable(_)));
        let was = self.available.swap(reachable, Ordering::Relaxed);
        match (was, reachable, result) {
            (true, false, Err(e)) => tracing::warn!(
                error = %e,
                "control-plane store unreachable: serving the last known tenants and keys; admin writes fail with 503"
            ),
            (false, true, _) => tracing::info!("control-plane store reachable again"),
            _ => {}
        }
    }

    /// Reloads the directory if the store's version moved (right after a write of this replica,
    /// and from the poll loop).
    pub async fn refresh(&self, current: &CurrentDirectory) -> Result<(), StoreError> {
        let version = self.call(|s| s.version()).await?;
        if version == self.version() {
            return Ok(());
        }
        let snapshot = Arc::new(self.call(|s| s.snapshot()).await?);
        self.apply(current, snapshot);
        Ok(())
    }

    /// Swaps in the directory of `snapshot`, unless a newer one is in force already.
    fn apply(&self, current: &CurrentDirectory, snapshot: Arc<Snapshot>) {
        let _order = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        if snapshot.version <= self.version() {
            return;
        }
        let version = snapshot.version;
        match current.get().with_store(snapshot) {
            Ok(directory) => {
                let (tenants, keys) = (directory.tenants.len(), directory.tenant_key_count());
                current.replace(directory);
                self.applied.store(version, Ordering::Release);
                tracing::info!(
                    version,
                    tenants,
                    keys,
                    "tenants and keys reloaded from the control-plane store"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, version, "control-plane store snapshot refused; keeping the previous tenants")
            }
        }
    }

    /// Polls the store and flushes last-use times until the process ends.
    pub fn spawn(self: &Arc<Self>, current: Arc<CurrentDirectory>) {
        let sync = self.clone();
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(sync.poll_interval);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut flush = tokio::time::interval(sync.flush_interval);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = poll.tick() => {
                        // Errors are noted (and logged once) by `call`.
                        let _ = sync.refresh(&current).await;
                    }
                    _ = flush.tick() => sync.flush().await,
                }
            }
        });
    }

    /// Writes the last-use times gathered since the last flush; kept for the next one if the
    /// store cannot take them.
    pub async fn flush(&self) {
        let used = std::mem::take(&mut *self.last_used.lock().unwrap_or_else(|e| e.into_inner()));
        if used.is_empty() {
            return;
        }
        let kept = used.clone();
        if self.call(move |s| s.touch(&used)).await.is_err() {
            let mut pending = self.last_used.lock().unwrap_or_else(|e| e.into_inner());
            for (key, at) in kept {
                let slot = pending.entry(key).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
    }
}

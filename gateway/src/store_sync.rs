//! Keeps this replica's [`Directory`] in step with the control-plane store: seeds an empty store
//! from the configuration file at start, polls the store's version (every write bumps it) and
//! swaps in a new directory when it moved, and writes keys' last-use times in batches. The store
//! is never read per request; while it cannot be reached the replica serves the last directory it
//! built, and writes through the admin API fail with 503.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use control_plane::{ControlPlane, Shortfall, Snapshot, StoreError, Usage};
use policies::TenantId;

use crate::config::GatewayConfig;
use crate::directory::{CurrentDirectory, Directory};
use crate::metrics::RequestMetrics;
use crate::metrics::{AllowanceLabels, CrossingLabels};

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
    /// Reservations against grants and budgets of requests in flight here: their leases are
    /// renewed until they settle.
    holds: Mutex<HashSet<String>>,
    /// How long a reservation lasts unless renewed.
    lease: Duration,
    /// Thresholds (percent) at which an allowance's use is reported.
    thresholds: Vec<u8>,
    /// Where crossings are POSTed.
    webhook: Option<String>,
    /// How long stored responses are kept.
    responses_retention: Duration,
    /// Whether an uploaded adapter's file could not be fetched (tried again at every poll).
    adapter_files_missing: AtomicBool,
    /// What alerts need once serving: the directory (grants' and budgets' amounts) and the
    /// metrics (set by `spawn`).
    watch: std::sync::OnceLock<(Arc<CurrentDirectory>, Arc<RequestMetrics>)>,
}

/// A request's reservation against grants and budgets: settled with its real use when the
/// request ends, or with none if it is dropped unsettled (refused after admission). Settling
/// never blocks the request: the store call runs on its own task.
pub struct AllowanceHold {
    id: String,
    sync: Arc<StoreSync>,
    settled: bool,
}

impl AllowanceHold {
    /// Ends the reservation: `used` goes to the allowances it held (on a task of its own).
    pub fn settle(mut self, used: Usage) {
        self.settled = true;
        self.sync.clone().end(self.id.clone(), used);
    }

    /// Ends the reservation and waits for the store to take it; if it cannot at once, the
    /// settlement goes on retrying on a task of its own (the lease keeps the hold meanwhile).
    pub async fn settle_and_wait(mut self, used: Usage) {
        self.settled = true;
        let (sync, id) = (self.sync.clone(), self.id.clone());
        if let Err(e) = sync.settle_once(&id, used).await {
            tracing::warn!(error = %e, "allowance settlement failed; retrying in the background");
            sync.end(id, used);
        }
    }
}

impl Drop for AllowanceHold {
    fn drop(&mut self) {
        if !self.settled {
            self.sync.clone().end(self.id.clone(), Usage::default());
        }
    }
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
        let file_tenants: Vec<TenantId> = config.tenants.iter().map(|t| t.id.clone()).collect();
        let cache = from_file.adapter_cache.clone();
        let (store, seeded, snapshot, adapter_files) = tokio::task::spawn_blocking(move || {
            let store = match settings.postgres_url() {
                Some(url) => ControlPlane::connect_postgres(&url)?,
                None => ControlPlane::open_sqlite_with(
                    &settings.resolved_path(),
                    settings.durability == ledger::Durability::PowerLoss,
                )?,
            };
            let seeded = store.seed(&seeds)?;
            let snapshot = store.snapshot()?;
            let adapter_files = crate::adapters::fetch_files(&store, &snapshot, &cache);
            Ok::<_, StoreError>((store, seeded, snapshot, adapter_files))
        })
        .await?
        .context("opening the control-plane store")?;
        // The file's tenants that the store does not hold: the ones an operator may expect to
        // see and will not (another replica of the fleet, with the same file, seeded the rest).
        let missing: Vec<&str> = file_tenants
            .iter()
            .filter(|t| snapshot.tenant(t).is_none())
            .map(TenantId::as_str)
            .collect();
        match (seeded, file_tenants.len(), missing.is_empty()) {
            (true, n, _) => tracing::info!(
                store = store.kind(),
                tenants = n,
                "control-plane store seeded from the configuration file's [[tenants]]; from now on it is the source of tenants and keys"
            ),
            (false, 0, _) => {}
            (false, _, true) => tracing::info!(
                store = store.kind(),
                "the control-plane store holds the tenants (seeded before); the configuration file's [[tenants]] are not read again"
            ),
            (false, _, false) => tracing::warn!(
                store = store.kind(),
                ignored = %missing.join(", "),
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
            holds: Mutex::new(HashSet::new()),
            lease: Duration::from_secs(config.control_plane.allowance_lease_secs.max(1)),
            thresholds: config.control_plane.alert_thresholds_percent.clone(),
            webhook: config.control_plane.alert_webhook_url.clone(),
            responses_retention: Duration::from_secs(
                config
                    .control_plane
                    .responses_retention_hours
                    .saturating_mul(3600),
            ),
            adapter_files_missing: AtomicBool::new(!adapter_files),
            watch: std::sync::OnceLock::new(),
        });
        Ok((sync, directory))
    }

    /// How long stored responses are kept.
    pub fn responses_retention(&self) -> Duration {
        self.responses_retention
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
            let directory = current.get();
            if let Some(snapshot) = &directory.snapshot {
                if self.adapter_files_missing.load(Ordering::Relaxed) {
                    self.fetch_adapter_files(snapshot.clone(), &directory.adapter_cache)
                        .await?;
                }
            }
            return Ok(());
        }
        let snapshot = Arc::new(self.call(|s| s.snapshot()).await?);
        // Files first: the directory that lists an adapter never comes before its file.
        let cache = current.get().adapter_cache.clone();
        self.fetch_adapter_files(snapshot.clone(), &cache).await?;
        self.apply(current, snapshot);
        Ok(())
    }

    /// Fetches the uploaded adapters' files of `snapshot` that this replica lacks into `cache`.
    async fn fetch_adapter_files(
        &self,
        snapshot: Arc<Snapshot>,
        cache: &std::path::Path,
    ) -> Result<(), StoreError> {
        let cache = cache.to_path_buf();
        let complete = self
            .call(move |s| Ok(crate::adapters::fetch_files(s, &snapshot, &cache)))
            .await?;
        self.adapter_files_missing
            .store(!complete, Ordering::Relaxed);
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

    /// Reserves `most` for a request of `tenant` (and `project`) against the grants and budgets
    /// that apply (`Ok(Ok(None))`: none does); a shortfall names the allowance.
    pub async fn reserve(
        self: &Arc<Self>,
        snapshot: Arc<Snapshot>,
        tenant: TenantId,
        project: Option<String>,
        most: Usage,
    ) -> Result<Result<Option<AllowanceHold>, Shortfall>, StoreError> {
        let lease_ms = self.lease.as_millis() as i64;
        let reserved = self
            .call(move |s| s.reserve(&snapshot, &tenant, project.as_deref(), most, lease_ms))
            .await?;
        Ok(reserved.map(|held| {
            held.map(|r| {
                self.holds
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(r.id.clone());
                AllowanceHold {
                    id: r.id,
                    sync: self.clone(),
                    settled: false,
                }
            })
        }))
    }

    /// Settles reservation `id` on a task of its own (retried while the store is away: the
    /// lease keeps it held meanwhile, and lapses if this process dies).
    fn end(self: Arc<Self>, id: String, used: Usage) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            for attempt in 0..30u32 {
                match self.settle_once(&id, used).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "allowance settlement failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            // Given up: stop renewing its lease, so that it lapses.
            self.forget_hold(&id);
        });
    }

    /// Settles reservation `id` once: its use goes to the store, crossed thresholds are
    /// reported, and its lease is no longer renewed.
    async fn settle_once(&self, id: &str, used: Usage) -> Result<(), StoreError> {
        let held = id.to_string();
        let settled = self.call(move |s| s.settle(&held, used)).await?;
        self.alert(&settled);
        self.forget_hold(id);
        Ok(())
    }

    fn forget_hold(&self, id: &str) {
        self.holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Updates the use gauges of the allowances a settlement touched, and reports the
    /// thresholds it crossed (this replica's settlement is the one that crossed them).
    fn alert(&self, settled: &[control_plane::Settled]) {
        let Some((current, metrics)) = self.watch.get() else {
            return;
        };
        let directory = current.get();
        let Some(snapshot) = directory.snapshot.as_ref() else {
            return;
        };
        for s in settled {
            let Some(allowance) = Allowance::of(snapshot, s.kind, &s.id, s.period.as_deref())
            else {
                continue;
            };
            allowance.show(metrics, s.after);
            for &t in &self.thresholds {
                let line = allowance.capacity as i128 * t as i128;
                if (s.before as i128) * 100 < line && (s.after as i128) * 100 >= line {
                    metrics
                        .allowance_crossings
                        .get_or_create(&CrossingLabels {
                            kind: allowance.kind.into(),
                            id: allowance.id.clone(),
                            threshold: t.to_string(),
                        })
                        .inc();
                    tracing::warn!(kind = allowance.kind, id = %allowance.id, tenant = %allowance.tenant, threshold = t, "an allowance crossed an alert threshold");
                    if let Some(url) = &self.webhook {
                        post_alert(url.clone(), allowance.event(t, s.after));
                    }
                }
            }
        }
    }

    /// Sets every allowance's use gauge from the store (every replica, every flush).
    async fn refresh_gauges(&self) {
        let Some((current, metrics)) = self.watch.get() else {
            return;
        };
        let Ok(uses) = self.call(|s| s.allowance_use()).await else {
            return;
        };
        let directory = current.get();
        let Some(snapshot) = directory.snapshot.as_ref() else {
            return;
        };
        let now = control_plane::now_ms();
        let current_period = |b: &control_plane::Budget| Some(b.period_at(now).0);
        let allowances = (snapshot.grants.iter().map(Allowance::of_grant)).chain(
            snapshot
                .budgets
                .iter()
                .map(|b| Allowance::of_budget(b, current_period(b))),
        );
        for a in allowances {
            let used = uses
                .iter()
                .find(|u| u.kind == a.kind && u.id == a.id && u.period == a.period)
                .map_or(0, |u| u.used);
            a.show(metrics, used);
        }
    }

    /// Renews the leases of this replica's reservations.
    async fn renew(&self) {
        let ids: Vec<String> = self
            .holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        if ids.is_empty() {
            return;
        }
        let lease_ms = self.lease.as_millis() as i64;
        let _ = self.call(move |s| s.renew(&ids, lease_ms)).await;
    }

    /// Polls the store and flushes last-use times until the process ends.
    pub fn spawn(self: &Arc<Self>, current: Arc<CurrentDirectory>, metrics: Arc<RequestMetrics>) {
        let _ = self.watch.set((current.clone(), metrics));
        let sync = self.clone();
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(sync.poll_interval);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut flush = tokio::time::interval(sync.flush_interval);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut renew = tokio::time::interval(sync.lease / 3);
            renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = poll.tick() => {
                        // Errors are noted (and logged once) by `call`.
                        let _ = sync.refresh(&current).await;
                    }
                    _ = flush.tick() => {
                        sync.flush().await;
                        sync.refresh_gauges().await;
                        // Stored responses past their retention (any replica may purge).
                        let now = control_plane::now_ms();
                        let _ = sync.call(move |s| s.purge_api_objects(now)).await;
                    }
                    _ = renew.tick() => sync.renew().await,
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

/// A grant or budget as alerts name it.
struct Allowance {
    kind: &'static str,
    id: String,
    tenant: String,
    project: Option<String>,
    unit: &'static str,
    period: Option<String>,
    /// Its amount as it is announced (tokens, or minor units).
    amount: i64,
    /// Its amount in the unit its use is counted in (money: millionths of a minor unit).
    capacity: i64,
}

impl Allowance {
    /// The grant or budget (in `period`) a settlement named, if the snapshot knows it.
    fn of(snapshot: &Snapshot, kind: &str, id: &str, period: Option<&str>) -> Option<Self> {
        match kind {
            "grant" => snapshot
                .grants
                .iter()
                .find(|g| g.id == id)
                .map(Self::of_grant),
            _ => snapshot
                .budgets
                .iter()
                .find(|b| b.id == id)
                .map(|b| Self::of_budget(b, period.map(str::to_string))),
        }
    }

    fn of_grant(g: &control_plane::Grant) -> Self {
        Self {
            kind: "grant",
            id: g.id.clone(),
            tenant: g.tenant.to_string(),
            project: g.project.clone(),
            unit: match g.unit {
                control_plane::Unit::Tokens => "tokens",
                control_plane::Unit::Money => "money",
            },
            period: None,
            amount: g.amount,
            capacity: g.capacity(),
        }
    }

    fn of_budget(b: &control_plane::Budget, period: Option<String>) -> Self {
        Self {
            kind: "budget",
            id: b.id.clone(),
            tenant: b.tenant.to_string(),
            project: b.project.clone(),
            unit: "money",
            period,
            amount: b.amount,
            capacity: b.capacity(),
        }
    }

    /// Sets its use gauge: `used` (in the counting unit) over its amount.
    fn show(&self, metrics: &RequestMetrics, used: i64) {
        metrics
            .allowance_used
            .get_or_create(&self.labels())
            .set(used as f64 / self.capacity.max(1) as f64);
    }

    fn labels(&self) -> AllowanceLabels {
        AllowanceLabels {
            kind: self.kind.into(),
            id: self.id.clone(),
            tenant: self.tenant.clone(),
        }
    }

    /// The webhook's body for crossing `threshold` at `used` (in the counting unit).
    fn event(&self, threshold: u8, used: i64) -> serde_json::Value {
        let used = match self.unit {
            "money" => (used + 500_000).div_euclid(1_000_000),
            _ => used,
        };
        serde_json::json!({
            "type": "allowance.threshold",
            "kind": self.kind,
            "id": self.id,
            "tenant": self.tenant,
            "project": self.project,
            "period": self.period,
            "unit": self.unit,
            "amount": self.amount,
            "used": used,
            "threshold_percent": threshold,
            "at_ms": control_plane::now_ms(),
        })
    }
}

/// POSTs an alert to the operator's webhook on a task of its own (three tries, 5 s each).
fn post_alert(url: String, event: serde_json::Value) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "alert webhook: no HTTP client");
                return;
            }
        };
        for attempt in 1..=3 {
            match client.post(&url).json(&event).send().await {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => tracing::warn!(
                    status = r.status().as_u16(),
                    attempt,
                    "alert webhook refused the alert"
                ),
                Err(e) => tracing::warn!(error = %e, attempt, "alert webhook unreachable"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

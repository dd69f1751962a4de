//! The control plane's durable store: tenants (institutions) -> projects -> keys, admin roles,
//! and an append-only audit log of every write, in SQLite for one process or PostgreSQL for a
//! fleet. The gateway never reads it per request: it caches a [`Snapshot`], polls the version
//! (bumped by every write, in the write's own transaction) and reloads when it moved.
//!
//! Every call blocks (SQLite, the synchronous PostgreSQL client): call it from a blocking
//! thread, not from an async task.

#![warn(missing_docs)]

mod actor;
mod adapters;
mod allowances;
mod api_objects;
mod backend;
mod error;
mod model;
mod postgres;
mod sqlite;
mod writes;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

pub use actor::{Actor, Role};
pub use adapters::{check_adapter_id, AdapterEntry, AdapterSource, ADAPTER_FILE, MAX_ADAPTER_ID};
pub use allowances::{
    any_allowance, AllowanceUse, Budget, Grant, Period, Reservation, Settled, Shortfall, Unit,
    Usage,
};
pub use api_objects::ApiObject;
pub use error::{Result, StoreError};
pub use model::{
    civil_from_days, now_ms, AuditEntry, AuditQuery, CostMicros, Key, Limits, Price, Project,
    Snapshot, Tenant,
};
pub use writes::{IssuedKey, SeedTenant};

use backend::{Backend, ADAPTER, BUDGET, GRANT, KEY, PRICE, PROJECT, TENANT};

/// A connection to the store. Cheap to share behind an `Arc`; calls are serialised.
pub struct ControlPlane {
    backend: Mutex<Box<dyn Backend>>,
    kind: &'static str,
}

impl ControlPlane {
    /// Opens (creating and migrating if needed) the SQLite store at `path`, every commit synced
    /// to disk.
    pub fn open_sqlite(path: &Path) -> Result<Self> {
        Self::open_sqlite_with(path, true)
    }

    /// [`Self::open_sqlite`]; `sync_every_commit = false` leaves commits in the WAL until a
    /// checkpoint syncs them (`synchronous = NORMAL`): they survive the process being killed,
    /// not a power cut, for much less time per commit (two per request of a tenant with
    /// grants or budgets).
    pub fn open_sqlite_with(path: &Path, sync_every_commit: bool) -> Result<Self> {
        Ok(Self {
            backend: Mutex::new(Box::new(sqlite::open(path, sync_every_commit)?)),
            kind: "sqlite",
        })
    }

    /// Connects to the PostgreSQL store at `url` and brings its schema up to date.
    pub fn connect_postgres(url: &str) -> Result<Self> {
        Ok(Self {
            backend: Mutex::new(Box::new(postgres::connect(url)?)),
            kind: "postgres",
        })
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    fn backend(&self) -> std::sync::MutexGuard<'_, Box<dyn Backend>> {
        self.backend.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store's version: it moves with every write.
    pub fn version(&self) -> Result<i64> {
        self.backend().version()
    }

    /// Everything the replicas cache, at one version.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let rows = self.backend().load()?;
        let last_used: HashMap<String, i64> = rows.last_used.into_iter().collect();
        let mut snapshot = Snapshot {
            version: rows.version,
            ..Snapshot::default()
        };
        for (kind, body) in rows.documents {
            let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("{kind}: {e}"));
            match kind.as_str() {
                TENANT => snapshot
                    .tenants
                    .push(serde_json::from_str(&body).map_err(corrupt)?),
                PROJECT => snapshot
                    .projects
                    .push(serde_json::from_str(&body).map_err(corrupt)?),
                GRANT => snapshot
                    .grants
                    .push(serde_json::from_str(&body).map_err(corrupt)?),
                BUDGET => snapshot
                    .budgets
                    .push(serde_json::from_str(&body).map_err(corrupt)?),
                PRICE => snapshot
                    .prices
                    .push(serde_json::from_str(&body).map_err(corrupt)?),
                ADAPTER => snapshot
                    .adapters
                    .push(serde_json::from_str(&body).map_err(corrupt)?),
                KEY => {
                    let mut key: Key = serde_json::from_str(&body).map_err(corrupt)?;
                    key.last_used_at_ms = last_used.get(&key.id).copied();
                    snapshot.keys.push(key);
                }
                other => return Err(StoreError::Corrupt(format!("unknown kind `{other}`"))),
            }
        }
        Ok(snapshot)
    }

    /// Audit entries, oldest first.
    pub fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        self.backend().audit_log(query)
    }

    /// When each key was last used (key id -> Unix ms): written apart from the snapshot's
    /// version, so a snapshot's figures may be older.
    pub fn last_used(&self) -> Result<HashMap<String, i64>> {
        Ok(self.backend().last_used()?.into_iter().collect())
    }

    /// Stores `object` (replacing one of the same kind and id).
    pub fn put_api_object(&self, object: &ApiObject) -> Result<()> {
        self.backend().api_put(object)
    }

    /// `tenant`'s object `kind`/`id`, if it exists, belongs to `tenant` and is still kept at
    /// `now_ms` (another tenant's is answered as absent).
    pub fn api_object(
        &self,
        kind: &str,
        tenant: &str,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<ApiObject>> {
        Ok(self
            .backend()
            .api_get(kind, tenant, id)?
            .filter(|o| o.live_at(now_ms)))
    }

    /// Deletes `tenant`'s object `kind`/`id`; whether there was one.
    pub fn delete_api_object(&self, kind: &str, tenant: &str, id: &str) -> Result<bool> {
        self.backend().api_delete(kind, tenant, id)
    }

    /// Objects of `kind` (of `tenant`, or of every tenant with `None`) whose id starts with
    /// `id_prefix`, oldest first, still kept at `now_ms`.
    pub fn api_objects(
        &self,
        kind: &str,
        tenant: Option<&str>,
        id_prefix: &str,
        now_ms: i64,
    ) -> Result<Vec<ApiObject>> {
        let mut objects = self.backend().api_list(kind, tenant, id_prefix)?;
        objects.retain(|o| o.live_at(now_ms));
        Ok(objects)
    }

    /// What `tenant`'s objects of `kind` weigh (bytes of their content).
    pub fn api_object_bytes(&self, kind: &str, tenant: &str) -> Result<i64> {
        self.backend().api_bytes(kind, tenant)
    }

    /// Takes or renews the lease on `kind`/`id` for `owner` for `lease_ms`: `true` if it is
    /// `owner`'s (free, expired, or already its own), `false` while another holds it.
    pub fn claim_api_object(
        &self,
        kind: &str,
        id: &str,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool> {
        self.backend()
            .api_claim(kind, id, owner, now_ms, now_ms.saturating_add(lease_ms))
    }

    /// Gives `owner`'s lease on `kind`/`id` back.
    pub fn release_api_object(&self, kind: &str, id: &str, owner: &str) -> Result<()> {
        self.backend().api_release(kind, id, owner)
    }

    /// Purges every object whose retention ended by `now_ms`; how many.
    pub fn purge_api_objects(&self, now_ms: i64) -> Result<u64> {
        self.backend().api_purge(now_ms)
    }

    /// Records when keys were last used (`(key id, Unix ms)`; the latest of each wins).
    pub fn touch(&self, used: &HashMap<String, i64>) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        let mut used: Vec<(String, i64)> = used.iter().map(|(k, t)| (k.clone(), *t)).collect();
        used.sort();
        self.backend().touch(&used)
    }
}

#[cfg(test)]
mod tests;

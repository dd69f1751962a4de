//! What the two stores (SQLite, PostgreSQL) provide: documents by kind and id, the version
//! counter, the append-only audit log and the keys' last use. The rules of every write live
//! above them (`writes`), written once.

use crate::api_objects::ApiObject;
use crate::error::Result;
use crate::model::{AuditEntry, AuditQuery};

/// The kinds of stored documents.
pub(crate) const TENANT: &str = "tenant";
pub(crate) const PROJECT: &str = "project";
pub(crate) const KEY: &str = "key";
pub(crate) const PRICE: &str = "price";
pub(crate) const GRANT: &str = "grant";
pub(crate) const BUDGET: &str = "budget";
pub(crate) const ADAPTER: &str = "adapter";

/// Everything stored, as read in one transaction.
pub(crate) struct Rows {
    /// The version the rows belong to.
    pub version: i64,
    /// `(kind, body)` of every document.
    pub documents: Vec<(String, String)>,
    /// `(key id, last used ms)`.
    pub last_used: Vec<(String, i64)>,
}

/// One write transaction, begun with the version bumped (which orders concurrent writers).
pub(crate) trait Tx {
    /// The document `kind`/`id`.
    fn get(&mut self, kind: &str, id: &str) -> Result<Option<String>>;
    /// Inserts or replaces a document.
    fn put(&mut self, kind: &str, id: &str, tenant: Option<&str>, body: &str) -> Result<()>;
    /// Documents of `kind` stored.
    fn count(&mut self, kind: &str) -> Result<i64>;
    /// Appends to the audit log (its `seq` is the store's).
    fn audit(&mut self, entry: &AuditEntry) -> Result<()>;
    /// What `allowance` has used, its row locked until the transaction ends (created at 0).
    fn lock_used(&mut self, allowance: &str) -> Result<i64>;
    /// What live reservations (expiring after `now_ms`) hold against `allowance`.
    fn reserved(&mut self, allowance: &str, now_ms: i64) -> Result<i64>;
    /// Holds `amount` of `allowance` for request `id` until `expires_ms`.
    fn reserve(&mut self, id: &str, allowance: &str, amount: i64, expires_ms: i64) -> Result<()>;
    /// Ends request `id`'s reservations: `(allowance, amount)` of each.
    fn release(&mut self, id: &str) -> Result<Vec<(String, i64)>>;
    /// Adds `amount` to what `allowance` has used; returns the new figure.
    fn add_used(&mut self, allowance: &str, amount: i64) -> Result<i64>;
}

/// A store's connection.
pub(crate) trait Backend: Send {
    /// The current version.
    fn version(&mut self) -> Result<i64>;
    /// Everything, consistently.
    fn load(&mut self) -> Result<Rows>;
    /// Runs `work` in one transaction after bumping the version; commits if it succeeds.
    fn write(&mut self, work: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()>;
    /// Runs `work` in one transaction that changes nothing replicas cache (reservations and
    /// usage of allowances): the version stays.
    fn transact(&mut self, work: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()>;
    /// Extends the leases of requests `ids` to `expires_ms`; forgets reservations expired
    /// before `forget_before_ms`.
    fn renew(&mut self, ids: &[String], expires_ms: i64, forget_before_ms: i64) -> Result<()>;
    /// What every allowance has used.
    fn allowance_use(&mut self) -> Result<Vec<(String, i64)>>;
    /// Audit entries, oldest first.
    fn audit_log(&mut self, query: &AuditQuery) -> Result<Vec<AuditEntry>>;
    /// Records when keys were last used (the later of the stored and the given time).
    fn touch(&mut self, used: &[(String, i64)]) -> Result<()>;
    /// When each key was last used, as stored.
    fn last_used(&mut self) -> Result<Vec<(String, i64)>>;
    /// Stores an API object (replacing one of the same kind and id).
    fn api_put(&mut self, object: &ApiObject) -> Result<()>;
    /// `tenant`'s object `kind`/`id`.
    fn api_get(&mut self, kind: &str, tenant: &str, id: &str) -> Result<Option<ApiObject>>;
    /// Deletes `tenant`'s object `kind`/`id`; whether there was one.
    fn api_delete(&mut self, kind: &str, tenant: &str, id: &str) -> Result<bool>;
    /// Deletes every object expired by `now_ms`; how many.
    fn api_purge(&mut self, now_ms: i64) -> Result<u64>;
    /// Objects of `kind` (of `tenant`, or of every tenant) whose id starts with `id_prefix`,
    /// oldest first.
    fn api_list(
        &mut self,
        kind: &str,
        tenant: Option<&str>,
        id_prefix: &str,
    ) -> Result<Vec<ApiObject>>;
    /// What `tenant`'s objects of `kind` weigh, in bytes of their bodies.
    fn api_bytes(&mut self, kind: &str, tenant: &str) -> Result<i64>;
    /// Takes (or renews) the lease on object `kind`/`id` for `owner` until `until_ms`, if no
    /// other owner holds a lease running past `now_ms`; whether it is `owner`'s now.
    fn api_claim(
        &mut self,
        kind: &str,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool>;
    /// Gives `owner`'s lease on `kind`/`id` back.
    fn api_release(&mut self, kind: &str, id: &str, owner: &str) -> Result<()>;
}

/// The audit query's `WHERE` clause with placeholders written by `placeholder(n)`, and its
/// parameters (text, then integer), shared by both dialects.
pub(crate) fn audit_sql(
    query: &AuditQuery,
    placeholder: fn(usize) -> String,
) -> (String, Vec<AuditParam>) {
    let mut clauses = Vec::new();
    let mut params = Vec::new();
    if let Some(tenant) = &query.tenant {
        params.push(AuditParam::Text(tenant.to_string()));
        clauses.push(format!("tenant = {}", placeholder(params.len())));
    }
    if let Some(after) = query.after_seq {
        params.push(AuditParam::Int(after));
        clauses.push(format!("seq > {}", placeholder(params.len())));
    }
    let filter = match clauses.is_empty() {
        true => String::new(),
        false => format!("WHERE {}", clauses.join(" AND ")),
    };
    let limit = query.limit.unwrap_or(1000).min(10_000);
    let sql = format!(
        "SELECT seq, at_ms, actor_key, actor_role, actor_tenant, address, action, target, tenant, \
         before_json, after_json FROM cp_audit {filter} ORDER BY seq LIMIT {limit}"
    );
    (sql, params)
}

/// A parameter of the audit query.
pub(crate) enum AuditParam {
    Text(String),
    Int(i64),
}

/// A stored JSON column, read back.
pub(crate) fn json_column(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

//! What the store holds: tenants (institutions), their projects, keys, and the audit log. Each
//! object is stored as the JSON document its serde form gives, and shown by the admin API in the
//! same form (a key without its digest).

use policies::{ModelAllowList, Priority, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::actor::Role;

/// Limits of a tenant, a project or a key; absent is unlimited (within the wider scopes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests admitted per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Prompt plus `max_tokens` reserved per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u32>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Real tokens (prompt plus completion) per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_tokens: Option<u64>,
}

impl Limits {
    /// No limit set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The first limit of `self` above the same limit of `ceiling`: its name and the ceiling.
    /// A tenant-admin may set only limits within the operator's (an absent one is bounded by
    /// the wider scope's all the same: every scope is enforced).
    pub fn above(&self, ceiling: &Limits) -> Option<(&'static str, u64)> {
        let pairs = [
            (
                "requests_per_minute",
                self.requests_per_minute.map(u64::from),
                ceiling.requests_per_minute.map(u64::from),
            ),
            (
                "tokens_per_minute",
                self.tokens_per_minute.map(u64::from),
                ceiling.tokens_per_minute.map(u64::from),
            ),
            (
                "max_concurrent",
                self.max_concurrent.map(u64::from),
                ceiling.max_concurrent.map(u64::from),
            ),
            ("daily_tokens", self.daily_tokens, ceiling.daily_tokens),
        ];
        pairs
            .into_iter()
            .find_map(|(name, value, ceiling)| match (value, ceiling) {
                (Some(v), Some(c)) if v > c => Some((name, c)),
                _ => None,
            })
    }
}

/// An institution: its models, limits and place in the engines' fair share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// The tenant's id (metric label, ledger key).
    #[schema(value_type = String)]
    pub id: TenantId,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Models it may use (`["*"]`: all).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub models: ModelAllowList,
    /// Its limits, over all its projects and keys.
    #[serde(default)]
    pub limits: Limits,
    /// Fair share relative to other tenants (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Priority class: `interactive` (default) or `batch`.
    #[serde(default)]
    #[schema(value_type = String)]
    pub priority: Priority,
    /// Service tier; `[models.tiers]` may route it to other pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The most of an engine's running slots it may hold, above 0 and at most 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running_share: Option<f64>,
    /// The most of an engine's KV cache it may hold, above 0 and at most 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_kv_share: Option<f64>,
    /// Requests that may wait for admission in one engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_waiting: Option<usize>,
    /// Prefix-cache sharing group (see the configuration's `[[tenants]]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_cache_group: Option<String>,
    /// Deleted: its keys no longer work; its usage and audit rows stay.
    #[serde(default)]
    pub disabled: bool,
    /// When it was created (Unix ms).
    #[serde(default)]
    pub created_at_ms: i64,
    /// When it last changed (Unix ms).
    #[serde(default)]
    pub updated_at_ms: i64,
}

impl Tenant {
    /// A tenant with every model and no limits.
    pub fn new(id: TenantId) -> Self {
        Self {
            id,
            name: None,
            models: ModelAllowList::all(),
            limits: Limits::default(),
            weight: None,
            priority: Priority::default(),
            tier: None,
            max_running_share: None,
            max_kv_share: None,
            max_waiting: None,
            prefix_cache_group: None,
            disabled: false,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    /// The first value the engines could not use: its field and why.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(w) = self.weight {
            if !(w.is_finite() && w > 0.0) {
                return Err(("weight", format!("`weight` must be above 0, not {w}")));
            }
        }
        for (name, share) in [
            ("max_running_share", self.max_running_share),
            ("max_kv_share", self.max_kv_share),
        ] {
            if let Some(s) = share {
                if !(s > 0.0 && s <= 1.0) {
                    return Err((name, format!("`{name}` must be above 0 and at most 1")));
                }
            }
        }
        check_name(self.name.as_deref())
    }
}

/// A project's id inside its tenant: 1-64 of `[A-Za-z0-9_.-]`, like a tenant's.
pub(crate) fn check_project_id(id: &str) -> Result<(), (&'static str, String)> {
    TenantId::new(id).map(|_| ()).map_err(|_| {
        (
            "id",
            format!("invalid project id `{id}`: use 1-64 letters, digits, `_`, `.` or `-`"),
        )
    })
}

pub(crate) fn check_name(name: Option<&str>) -> Result<(), (&'static str, String)> {
    match name {
        Some(n) if n.chars().count() > 200 || n.chars().any(char::is_control) => Err((
            "name",
            "`name` must be at most 200 characters, none of them control characters".into(),
        )),
        _ => Ok(()),
    }
}

/// A department, an application or a grant holder inside a tenant, with limits of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// The tenant it belongs to.
    #[schema(value_type = String)]
    pub tenant: TenantId,
    /// Its id inside the tenant.
    pub id: String,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Models its keys may use, within the tenant's (absent: the tenant's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub models: Option<ModelAllowList>,
    /// Its limits, over all its keys, within the tenant's.
    #[serde(default)]
    pub limits: Limits,
    /// Its share of the tenant's service in the engines, against the tenant's other projects
    /// (default 1; the tenant's keys of no project count as one more project of weight 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Deleted: its keys no longer work; its usage and audit rows stay.
    #[serde(default)]
    pub disabled: bool,
    /// When it was created (Unix ms).
    #[serde(default)]
    pub created_at_ms: i64,
    /// When it last changed (Unix ms).
    #[serde(default)]
    pub updated_at_ms: i64,
}

impl Project {
    /// The store's id of the project: `tenant/project`.
    pub fn path(&self) -> String {
        format!("{}/{}", self.tenant, self.id)
    }

    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        check_project_id(&self.id)?;
        if let Some(w) = self.weight {
            if !(w.is_finite() && w > 0.0) {
                return Err(("weight", format!("`weight` must be above 0, not {w}")));
            }
        }
        check_name(self.name.as_deref())
    }
}

/// An API key as stored: never its plaintext, only its digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// Its public id (`key_` and 16 hex digits): what logs, usage records and the API name it by.
    pub id: String,
    /// SHA-256 of the key (`sha256:<hex>`); the admin API never shows it.
    pub digest: String,
    /// What it may do.
    pub role: Role,
    /// The tenant it belongs to (none for operator and auditor keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub tenant: Option<TenantId>,
    /// The project it belongs to, inside the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Models it may use, within its project's and tenant's (absent: theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub models: Option<ModelAllowList>,
    /// Its own limits, within its project's and tenant's.
    #[serde(default)]
    pub limits: Limits,
    /// It stops working at this time (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// Revoked at this time: it no longer works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<i64>,
    /// The key that replaced it in a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// When it was issued (Unix ms).
    #[serde(default)]
    pub created_at_ms: i64,
    /// The admin key that issued it.
    #[serde(default)]
    pub created_by: String,
    /// When a replica last saw it used (Unix ms; written every few seconds, not per request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at_ms: Option<i64>,
}

impl Key {
    /// Whether it authenticates at `now_ms`: not revoked, not expired.
    pub fn is_valid_at(&self, now_ms: i64) -> bool {
        self.revoked_at_ms.is_none() && self.expires_at_ms.is_none_or(|at| now_ms < at)
    }

    /// The admin API's view: everything but the digest.
    pub fn view(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.remove("digest");
        }
        value
    }
}

/// A model's price from a moment on: per million tokens, in integer minor units of the
/// centre's currency (cents, won), never floats. A new price is a new version; records keep the
/// version they were billed at, so a change never rewrites the past.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// The model it prices.
    pub model: String,
    /// In force for requests admitted from this time on (Unix ms), until a later version.
    #[serde(default)]
    pub effective_from_ms: i64,
    /// ISO 4217 code of the currency: the gateway's `[control_plane] currency`.
    #[serde(default)]
    pub currency: String,
    /// Minor units per million prompt tokens computed.
    pub input_per_mtok: u64,
    /// Minor units per million prompt tokens found in the prefix cache (absent: as
    /// `input_per_mtok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<u64>,
    /// Minor units per million generated tokens.
    pub output_per_mtok: u64,
    /// Percent taken off requests of the `batch` priority class (0-100).
    #[serde(default)]
    pub batch_discount_percent: u8,
    /// Its id: `model@effective_from_ms`, stored on every record it billed.
    #[serde(default)]
    pub version: String,
    /// When it was set (Unix ms).
    #[serde(default)]
    pub created_at_ms: i64,
}

/// Millionths of a minor unit: a price per million tokens times a token count, exactly.
pub type CostMicros = i64;

impl Price {
    /// What a request costs at this price, in millionths of a minor unit (exact: tokens times
    /// a price per million tokens). `cached` of the `prompt` tokens came from the prefix cache.
    /// A batch-class request gets the discount, rounded down.
    pub fn cost_micros(
        &self,
        prompt: u64,
        cached: u64,
        completion: u64,
        batch: bool,
    ) -> CostMicros {
        let cached = cached.min(prompt);
        let full = (prompt - cached) as i128 * self.input_per_mtok as i128
            + cached as i128 * self.cached_input_per_mtok.unwrap_or(self.input_per_mtok) as i128
            + completion as i128 * self.output_per_mtok as i128;
        let paid = match batch {
            true => full * (100 - self.batch_discount_percent.min(100) as i128) / 100,
            false => full,
        };
        paid.min(i64::MAX as i128) as CostMicros
    }
}

/// Everything replicas cache, as of one version of the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Bumped by every write.
    pub version: i64,
    /// Every tenant, disabled ones too, by id.
    pub tenants: Vec<Tenant>,
    /// Every project, by tenant and id.
    pub projects: Vec<Project>,
    /// Every key, revoked ones too, by id.
    pub keys: Vec<Key>,
    /// Every price version of every model.
    pub prices: Vec<Price>,
    /// Every grant, expired ones too.
    pub grants: Vec<crate::Grant>,
    /// Every budget.
    pub budgets: Vec<crate::Budget>,
    /// Every registered LoRA adapter, deleted ones too.
    pub adapters: Vec<crate::AdapterEntry>,
}

impl Snapshot {
    /// The tenant `id`.
    pub fn tenant(&self, id: &TenantId) -> Option<&Tenant> {
        self.tenants.iter().find(|t| &t.id == id)
    }

    /// The project `id` of `tenant`.
    pub fn project(&self, tenant: &TenantId, id: &str) -> Option<&Project> {
        self.projects
            .iter()
            .find(|p| &p.tenant == tenant && p.id == id)
    }

    /// The key `id`.
    pub fn key(&self, id: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// The price of `model` in force at `at_ms`: its latest version effective by then.
    pub fn price_at(&self, model: &str, at_ms: i64) -> Option<&Price> {
        self.prices
            .iter()
            .filter(|p| p.model == model && p.effective_from_ms <= at_ms)
            .max_by_key(|p| p.effective_from_ms)
    }
}

/// One write, as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Its place in the log (increasing).
    pub seq: i64,
    /// When (Unix ms).
    pub at_ms: i64,
    /// The admin key that wrote (its id; `config-file` for the seed from the configuration).
    pub actor_key: String,
    /// That key's role.
    pub actor_role: String,
    /// That key's tenant, for a tenant-admin.
    pub actor_tenant: Option<String>,
    /// The client's address.
    pub address: Option<String>,
    /// What was done: `tenant.create`, `project.update`, `key.revoke`, ...
    pub action: String,
    /// What it was done to: `tenant:acme`, `project:acme/radiology`, `key:key_...`.
    pub target: String,
    /// The tenant it concerns (a tenant-admin sees the entries of its own).
    pub tenant: Option<String>,
    /// The object before (absent for a creation).
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    /// The object after.
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}

/// Which audit entries: all filters optional.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only entries about this tenant.
    pub tenant: Option<TenantId>,
    /// Only entries after this sequence number (paging).
    pub after_seq: Option<i64>,
    /// At most this many (oldest first).
    pub limit: Option<u32>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The UTC date (year, month, day) `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`): budgets' periods and the console's dates.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A random id: `prefix`, `_` and 16 hex digits.
pub(crate) fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

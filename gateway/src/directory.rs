//! Who may call: tenant keys and specs, and admin keys with their roles, from the configuration
//! file or, once operators manage them, from the control-plane store's snapshot. Swapped whole on
//! reload (of the file, or of the store when its version moves), so a request sees one
//! consistent version. The store itself is never read per request.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use control_plane::{Actor, Limits, Role, Snapshot};
use policies::{
    ApiKey, KeyDigest, KeyGrant, KeyId, KeyStore, ResolvedKey, TenantLimits, TenantSpec,
};

use crate::adapters::AdapterCatalog;
use crate::config::{ConfigError, GatewayConfig};

/// Where tenants and keys come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The configuration file's `[[tenants]]`.
    File,
    /// The control-plane store (the file's tenants are ignored).
    Store,
}

impl Source {
    /// `file` or `store`: what `/admin` responses say.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Store => "store",
        }
    }
}

/// An admin key of the store: what it may do, until when.
#[derive(Debug, Clone)]
struct AdminGrant {
    key_id: String,
    role: Role,
    tenant: Option<policies::TenantId>,
    expires_at_ms: Option<i64>,
}

/// The directory in force: read per request (a snapshot), swapped whole on reload.
pub struct CurrentDirectory(RwLock<Arc<Directory>>);

impl CurrentDirectory {
    /// Starts with `directory`.
    pub fn new(directory: Directory) -> Self {
        Self(RwLock::new(Arc::new(directory)))
    }

    /// The directory now (a reload swaps in another; this one stays as it is).
    pub fn get(&self) -> Arc<Directory> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `directory` in force; requests already admitted keep what they were admitted with.
    pub fn replace(&self, directory: Directory) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(directory);
    }
}

/// Tenants, their keys, and the admin keys.
pub struct Directory {
    keys: KeyStore,
    /// Every tenant that may call (deleted ones are left out).
    pub tenants: Vec<TenantSpec>,
    /// The configuration's admin keys: operators.
    admin_keys: Vec<KeyDigest>,
    /// The store's admin keys.
    admin_grants: HashMap<KeyDigest, AdminGrant>,
    /// Keys that may read `/metrics` (empty: it is open).
    metrics_keys: Vec<KeyDigest>,
    /// Where the tenants came from.
    pub source: Source,
    /// The store's contents this directory was built from (for the admin API's reads).
    pub snapshot: Option<Arc<Snapshot>>,
    /// The LoRA adapters served: the file's, and the store's registry.
    pub adapters: Arc<AdapterCatalog>,
    /// Where this replica keeps uploaded adapters' files.
    pub adapter_cache: PathBuf,
}

impl Directory {
    /// Reads them from a checked configuration.
    pub fn from_config(config: &GatewayConfig) -> Result<Self, ConfigError> {
        let admin_keys = config
            .admin_keys
            .iter()
            .map(|k| KeyDigest::parse(k).map_err(ConfigError::Keys))
            .collect::<Result<_, _>>()?;
        let metrics_keys = config
            .telemetry
            .metrics_keys
            .iter()
            .map(|k| KeyDigest::parse(k).map_err(ConfigError::Keys))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            metrics_keys,
            keys: config.key_store()?,
            tenants: config.tenants.iter().map(|t| t.spec()).collect(),
            admin_keys,
            admin_grants: HashMap::new(),
            source: Source::File,
            snapshot: None,
            adapters: Arc::new(AdapterCatalog::new(&config.adapters)),
            adapter_cache: config.adapter_registry.cache_directory(),
        })
    }

    /// The same admin and metrics keys, with the store's tenants and keys in place of the
    /// file's. Keys that are revoked, expired, of a deleted tenant or project, or unreadable
    /// are left out.
    pub fn with_store(&self, snapshot: Arc<Snapshot>) -> Result<Self, ConfigError> {
        let now = control_plane::now_ms();
        let tenants: HashMap<&policies::TenantId, Arc<TenantSpec>> = snapshot
            .tenants
            .iter()
            .filter(|t| !t.disabled)
            .map(|t| (&t.id, Arc::new(crate::config::tenant_spec(t))))
            .collect();
        let mut grants = Vec::new();
        let mut admin_grants = HashMap::new();
        for key in snapshot.keys.iter().filter(|k| k.is_valid_at(now)) {
            let Ok(digest) = KeyDigest::parse(&key.digest) else {
                tracing::warn!(key_id = %key.id, "control-plane key with an unreadable digest: skipped");
                continue;
            };
            let tenant = key.tenant.as_ref().and_then(|t| tenants.get(t));
            match (key.role, tenant) {
                (Role::Operator | Role::Auditor, _) | (Role::TenantAdmin, Some(_)) => {
                    admin_grants.insert(
                        digest,
                        AdminGrant {
                            key_id: key.id.clone(),
                            role: key.role,
                            tenant: key.tenant.clone(),
                            expires_at_ms: key.expires_at_ms,
                        },
                    );
                }
                (Role::Inference, Some(tenant)) => {
                    let project = match &key.project {
                        Some(id) => match snapshot.project(&tenant.id, id) {
                            Some(p) if !p.disabled => Some(p),
                            _ => continue,
                        },
                        None => None,
                    };
                    let mut grant = KeyGrant {
                        key_id: KeyId::new(key.id.clone()),
                        expires_at_ms: key.expires_at_ms,
                        ..KeyGrant::tenant_key(&digest, tenant.clone())
                    };
                    if let Some(project) = project {
                        grant.project = Some(Arc::from(project.id.as_str()));
                        grant.project_share = Some(policies::ProjectShare {
                            label: tenant.id.scope(&project.id),
                            weight: project.weight.unwrap_or(1.0),
                        });
                        push_scope(&mut grant, tenant, &project.id, &project.limits);
                        grant.models.extend(project.models.clone());
                    }
                    push_scope(&mut grant, tenant, &format!("@{}", key.id), &key.limits);
                    grant.models.extend(key.models.clone());
                    grants.push((digest, grant));
                }
                (Role::TenantAdmin | Role::Inference, None) => {}
            }
        }
        Ok(Self {
            keys: KeyStore::from_grants(grants)?,
            tenants: {
                let mut specs: Vec<TenantSpec> = tenants.values().map(|t| (**t).clone()).collect();
                specs.sort_by(|a, b| a.id.cmp(&b.id));
                specs
            },
            admin_grants,
            source: Source::Store,
            adapters: Arc::new(self.adapters.with_registry(&snapshot, &self.adapter_cache)),
            adapter_cache: self.adapter_cache.clone(),
            snapshot: Some(snapshot),
            admin_keys: self.admin_keys.clone(),
            metrics_keys: self.metrics_keys.clone(),
        })
    }

    /// What a presented tenant key grants, if it is valid.
    pub fn resolve(&self, key: &ApiKey) -> Option<ResolvedKey> {
        self.keys.resolve(key)
    }

    /// What the tenant key `key_id` grants now, if it is still valid (work it started that runs
    /// on after its request: a batch's lines).
    pub fn resolve_key_id(&self, key_id: &str) -> Option<ResolvedKey> {
        self.keys.by_key_id(key_id, control_plane::now_ms())
    }

    /// The admin behind a presented key, if it is one: the configuration's keys are operators
    /// (compared in constant time with each), the store's have their own role.
    pub fn admin(&self, key: &ApiKey, address: Option<String>) -> Option<Actor> {
        self.admin_by_digest(&key.digest(), address)
    }

    /// The admin whose key has this digest, if it is still one (a console session holds the
    /// digest, never the key, and asks again at every request: a revoked key ends it).
    pub fn admin_by_digest(&self, digest: &KeyDigest, address: Option<String>) -> Option<Actor> {
        let digest = *digest;
        if contains(&self.admin_keys, &digest) {
            return Some(Actor {
                key_id: format!("admin-{}", digest.key_id()),
                role: Role::Operator,
                tenant: None,
                address,
            });
        }
        let (stored, grant) = self.admin_grants.get_key_value(&digest)?;
        let live = grant
            .expires_at_ms
            .is_none_or(|at| control_plane::now_ms() < at);
        (stored.same_as(&digest) && live).then(|| Actor {
            key_id: grant.key_id.clone(),
            role: grant.role,
            tenant: grant.tenant.clone(),
            address,
        })
    }

    /// Whether `key` is an admin key of any role.
    pub fn is_admin(&self, key: &ApiKey) -> bool {
        self.admin(key, None).is_some()
    }

    /// Whether `/metrics` asks for a key at all.
    pub fn metrics_need_a_key(&self) -> bool {
        !self.metrics_keys.is_empty()
    }

    /// A key that may read `/metrics`: a metrics key, an operator or an auditor.
    pub fn may_read_metrics(&self, key: &ApiKey) -> bool {
        contains(&self.metrics_keys, &key.digest())
            | self.admin(key, None).is_some_and(|a| a.may_read_all())
    }

    /// Tenant keys stored.
    pub fn tenant_key_count(&self) -> usize {
        self.keys.len()
    }

    /// Admin keys stored.
    pub fn admin_key_count(&self) -> usize {
        self.admin_keys.len() + self.admin_grants.len()
    }
}

/// Adds the quota scope `tenant/child` to `grant` when `limits` sets any limit (a scope without
/// one would cost an admission, a Redis round trip in a fleet, for nothing).
fn push_scope(grant: &mut KeyGrant, tenant: &TenantSpec, child: &str, limits: &Limits) {
    if limits.is_empty() {
        return;
    }
    grant.scopes.push(TenantSpec {
        id: tenant.id.scope(child),
        models: policies::ModelAllowList::all(),
        limits: TenantLimits {
            requests_per_minute: limits.requests_per_minute,
            tokens_per_minute: limits.tokens_per_minute,
            max_concurrent: limits.max_concurrent,
            daily_tokens: limits.daily_tokens,
            share: Default::default(),
        },
        tier: None,
        prefix_cache_group: None,
    });
}

/// Whether `digest` is in `digests`, compared in constant time with each.
fn contains(digests: &[KeyDigest], digest: &KeyDigest) -> bool {
    digests
        .iter()
        .fold(false, |found, d| found | d.same_as(digest))
}

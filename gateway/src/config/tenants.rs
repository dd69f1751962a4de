//! `[[tenants]]`: who may call, with which keys and limits.

use policies::{
    KeyDigest, KeyStore, ModelAllowList, Priority, Share, TenantId, TenantLimits, TenantSpec,
};
use serde::Deserialize;

use super::*;

/// A tenant: its keys, models and limits (absent limits are unlimited).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's id (metric label, ledger key).
    pub id: TenantId,
    /// Stored forms (`sha256:<hex>`) of the tenant's keys; never plaintext.
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    /// Models it may use (`["*"]`: all).
    pub models: ModelAllowList,
    /// Requests admitted per minute.
    pub requests_per_minute: Option<u32>,
    /// Prompt plus `max_tokens` reserved per minute.
    pub tokens_per_minute: Option<u32>,
    /// Requests in flight at once.
    pub max_concurrent: Option<u32>,
    /// Real tokens (prompt plus completion) per UTC day.
    pub daily_tokens: Option<u64>,
    /// Fair share relative to other tenants (default 1).
    pub weight: Option<f64>,
    /// Service tier; `[models.tiers]` may route it to other pools.
    pub tier: Option<String>,
    /// Priority class: `interactive` (default) or `batch`.
    #[serde(default)]
    pub priority: Priority,
    /// The most of an engine's running slots it may hold, above 0 and at most 1.
    pub max_running_share: Option<f64>,
    /// The most of an engine's KV cache it may hold, above 0 and at most 1.
    pub max_kv_share: Option<f64>,
    /// Requests that may wait for admission in one engine (default: the model's
    /// `max_waiting_per_tenant`).
    pub max_waiting: Option<usize>,
    /// Prefix-cache sharing group: tenants naming the same group reuse each other's cached
    /// prompt blocks (a timing side channel between them, so only for tenants that agree);
    /// absent, the tenant's cache is its own.
    pub prefix_cache_group: Option<String>,
}

impl TenantConfig {
    /// A tenant with these stored keys, every model, and no limits.
    pub fn unlimited(id: TenantId, keys: Vec<String>) -> Self {
        Self {
            id,
            keys,
            models: ModelAllowList::all(),
            requests_per_minute: None,
            tokens_per_minute: None,
            max_concurrent: None,
            daily_tokens: None,
            weight: None,
            tier: None,
            priority: Priority::default(),
            max_running_share: None,
            max_kv_share: None,
            max_waiting: None,
            prefix_cache_group: None,
        }
    }

    /// The tenant as the policies see it.
    pub fn spec(&self) -> TenantSpec {
        tenant_spec(&self.record())
    }

    /// The tenant as the control-plane store keeps it (what the file seeds it with).
    pub fn record(&self) -> ::control_plane::Tenant {
        ::control_plane::Tenant {
            models: self.models.clone(),
            limits: ::control_plane::Limits {
                requests_per_minute: self.requests_per_minute,
                tokens_per_minute: self.tokens_per_minute,
                max_concurrent: self.max_concurrent,
                daily_tokens: self.daily_tokens,
            },
            weight: self.weight,
            priority: self.priority,
            tier: self.tier.clone(),
            max_running_share: self.max_running_share,
            max_kv_share: self.max_kv_share,
            max_waiting: self.max_waiting,
            prefix_cache_group: self.prefix_cache_group.clone(),
            ..::control_plane::Tenant::new(self.id.clone())
        }
    }
}

/// A tenant of the file or the store, as the policies see it.
pub fn tenant_spec(tenant: &::control_plane::Tenant) -> TenantSpec {
    let limits = &tenant.limits;
    TenantSpec {
        id: tenant.id.clone(),
        models: tenant.models.clone(),
        limits: TenantLimits {
            requests_per_minute: limits.requests_per_minute,
            tokens_per_minute: limits.tokens_per_minute,
            max_concurrent: limits.max_concurrent,
            daily_tokens: limits.daily_tokens,
            share: Share {
                weight: tenant.weight.unwrap_or(1.0),
                priority: tenant.priority,
                max_running_share: tenant.max_running_share,
                max_kv_share: tenant.max_kv_share,
                max_waiting: tenant.max_waiting,
            },
        },
        tier: tenant.tier.clone(),
        prefix_cache_group: tenant.prefix_cache_group.clone(),
    }
}

impl GatewayConfig {
    /// The file's tenants and their keys' digests, to seed an empty control-plane store.
    pub fn seed_tenants(&self) -> Result<Vec<::control_plane::SeedTenant>, ConfigError> {
        self.tenants
            .iter()
            .map(|tenant| {
                let keys = tenant
                    .keys
                    .iter()
                    .map(|stored| {
                        KeyDigest::parse(stored).map_err(|source| ConfigError::Key {
                            tenant: tenant.id.clone(),
                            source,
                        })
                    })
                    .collect::<Result<_, _>>()?;
                Ok(::control_plane::SeedTenant {
                    tenant: tenant.record(),
                    keys,
                })
            })
            .collect()
    }

    /// The key store of every configured tenant.
    pub fn key_store(&self) -> Result<KeyStore, ConfigError> {
        let mut entries = Vec::new();
        for tenant in &self.tenants {
            for stored in &tenant.keys {
                let digest = KeyDigest::parse(stored).map_err(|source| ConfigError::Key {
                    tenant: tenant.id.clone(),
                    source,
                })?;
                entries.push((digest, tenant.spec()));
            }
        }
        Ok(KeyStore::new(entries)?)
    }
}

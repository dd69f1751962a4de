//! Who may call: tenant keys and specs, and admin keys, as read from the config. Swapped whole
//! on reload, so a request sees one consistent version.

use policies::{ApiKey, KeyDigest, KeyStore, ResolvedKey, TenantSpec};
use subtle::ConstantTimeEq;

use crate::config::{ConfigError, GatewayConfig};

/// Tenants, their keys, and the admin keys, as configured.
pub struct Directory {
    keys: KeyStore,
    /// Every tenant.
    pub tenants: Vec<TenantSpec>,
    admin_keys: Vec<KeyDigest>,
    /// Keys that may read `/metrics` (empty: it is open).
    metrics_keys: Vec<KeyDigest>,
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
        })
    }

    /// The tenant of a presented key, if any.
    pub fn resolve(&self, key: &ApiKey) -> Option<ResolvedKey> {
        self.keys.resolve(key)
    }

    /// Compared against every admin digest in constant time.
    pub fn is_admin(&self, key: &ApiKey) -> bool {
        contains(&self.admin_keys, key)
    }

    /// Whether `/metrics` asks for a key at all.
    pub fn metrics_need_a_key(&self) -> bool {
        !self.metrics_keys.is_empty()
    }

    /// A key that may read `/metrics`: a metrics key or an admin key.
    pub fn may_read_metrics(&self, key: &ApiKey) -> bool {
        contains(&self.metrics_keys, key) | self.is_admin(key)
    }

    /// Tenant keys stored.
    pub fn tenant_key_count(&self) -> usize {
        self.keys.len()
    }

    /// Admin keys stored.
    pub fn admin_key_count(&self) -> usize {
        self.admin_keys.len()
    }
}

/// Whether `key`'s digest is in `digests`, compared in constant time with each.
fn contains(digests: &[KeyDigest], key: &ApiKey) -> bool {
    let digest = key.digest().to_string();
    digests.iter().fold(false, |found, d| {
        found | bool::from(d.to_string().as_bytes().ct_eq(digest.as_bytes()))
    })
}

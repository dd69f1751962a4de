//! The `engine-worker`: one machine's local engines behind the same OpenAI-compatible API, for
//! gateways on other machines to route to (`kind = "remote"` pools).
//!
//! It is this crate's server with a fixed shape: its one caller is the gateway, authenticated by
//! a shared secret (a bearer key, also accepted on `/admin/*`); no quotas (the gateway enforces
//! them); no usage ledger (the gateway bills what the worker reports, so a second ledger would
//! count every token twice). `GET /load` reports running and waiting sequences, free KV blocks
//! and outstanding tokens per model.

use policies::{ApiKey, TenantId};

use crate::config::{ConfigError, GatewayConfig, PoolKindConfig, TenantConfig};

/// The tenant id the gateway's requests run under on a worker.
pub const WORKER_TENANT: &str = "gateway";

/// Shortest accepted shared secret: a guessable one would open the accelerators to anyone on
/// the network.
pub const MIN_SECRET_LEN: usize = 16;

/// Turns a configuration (models and local pools) into the worker's: the secret as the only
/// key, no tenants of its own, no ledger.
pub fn worker_config(
    mut config: GatewayConfig,
    secret: &str,
) -> Result<GatewayConfig, ConfigError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(ConfigError::Invalid(format!(
            "the shared secret must have at least {MIN_SECRET_LEN} characters"
        )));
    }
    if let Some(pool) = config
        .pools
        .iter()
        .find(|p| p.kind != PoolKindConfig::Local)
    {
        return Err(ConfigError::Invalid(format!(
            "pool `{}`: an engine-worker serves local engines only",
            pool.name
        )));
    }
    if !config.tenants.is_empty() || !config.admin_keys.is_empty() {
        return Err(ConfigError::Invalid(
            "an engine-worker's only caller is the gateway, with the shared secret: remove `tenants` and `admin_keys`".into(),
        ));
    }
    let digest = ApiKey::from_plaintext(secret).digest().to_string();
    config.tenants = vec![TenantConfig::unlimited(
        TenantId::new(WORKER_TENANT).expect("valid tenant id"),
        vec![digest.clone()],
    )];
    config.admin_keys = vec![digest];
    config.ledger.enabled = false;
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_becomes_the_only_key() {
        let config = worker_config(GatewayConfig::default(), "a-long-enough-secret").unwrap();
        let store = config.key_store().unwrap();
        let resolved = store.resolve(&ApiKey::from_plaintext("a-long-enough-secret"));
        assert_eq!(resolved.unwrap().tenant.id.as_str(), WORKER_TENANT);
        assert!(store
            .resolve(&ApiKey::from_plaintext("another-secret-xx"))
            .is_none());
        assert!(!config.ledger.enabled);
    }

    #[test]
    fn refuses_short_secrets_remote_pools_and_tenants() {
        assert!(worker_config(GatewayConfig::default(), "short").is_err());
        let remote: GatewayConfig =
            toml::from_str("[[pools]]\nname = \"r\"\nkind = \"remote\"\nurls = [\"http://h:1\"]\n")
                .unwrap();
        assert!(worker_config(remote, "a-long-enough-secret").is_err());
        let tenants: GatewayConfig = toml::from_str("[[tenants]]\nid = \"t\"\n").unwrap();
        assert!(worker_config(tenants, "a-long-enough-secret").is_err());
    }
}

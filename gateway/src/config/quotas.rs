//! `[quotas]`: where tenants' limits are counted: in this process (the default, one replica)
//! or in Redis, shared by every replica of a fleet.

use std::time::Duration;

use redis_quotas::{OnUnavailable, RedisQuotaSettings};
use serde::Deserialize;

/// `[quotas]`: the quota store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasConfig {
    /// `redis://[user:password@]host:port/db`: count limits in Redis, shared by every replica
    /// that names the same server and `namespace`. Absent (the default): in this process.
    /// The environment variable `GATEWAY_REDIS_URL` takes its place when set (a Kubernetes
    /// Secret keeps the password out of the ConfigMap).
    pub redis_url: Option<String>,
    /// Prefix of every Redis key (default `gateway`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// While Redis cannot be reached: `fail_open` (default: each replica admits by its own
    /// in-process limits) or `fail_closed` (503 `quota_store_unavailable`).
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// Seconds a concurrency lease lives unless its replica renews it (every third of it):
    /// the time within which a crashed replica's slots come back (default 10, at least 1).
    #[serde(default)]
    pub lease_secs: Option<u64>,
    /// Milliseconds one call to Redis may take before Redis counts as unavailable
    /// (default 250).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Milliseconds between tries while Redis is unavailable (default 1000).
    #[serde(default)]
    pub retry_interval_ms: Option<u64>,
}

impl QuotasConfig {
    /// The Redis store's settings, if limits are to be shared (`GATEWAY_REDIS_URL` over the
    /// file).
    pub fn redis(&self) -> Option<RedisQuotaSettings> {
        let from_env = std::env::var("GATEWAY_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty());
        let url = from_env.or_else(|| self.redis_url.clone())?;
        Some(RedisQuotaSettings {
            url,
            namespace: self
                .namespace
                .clone()
                .unwrap_or_else(|| "gateway".to_string()),
            on_unavailable: self.on_unavailable,
            lease: Duration::from_secs(self.lease_secs.unwrap_or(10)),
            timeout: Duration::from_millis(self.timeout_ms.unwrap_or(250)),
            retry_interval: Duration::from_millis(self.retry_interval_ms.unwrap_or(1000)),
        })
    }
}

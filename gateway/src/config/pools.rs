//! `[[pools]]` and `[routing]`: where models run and how requests reach them.

use serde::Deserialize;

use super::*;

/// `[[pools]]`: replicas that serve models, in this process (`local`) or elsewhere (`remote`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The pool's name, as models list it.
    pub name: String,
    /// Local devices or remote upstreams.
    pub kind: PoolKindConfig,
    /// `local`: one engine (and request core) per device, per model: `cpu`, `cuda:N`, `metal:N`.
    #[serde(default)]
    pub devices: Vec<String>,
    /// `remote`: base URLs of OpenAI-compatible servers (`http://host:port[/v1]`).
    #[serde(default)]
    pub urls: Vec<String>,
    /// `remote`: environment variable holding the upstreams' API key (an `engine-worker`'s
    /// shared secret), sent as a bearer token. Keys never go in this file.
    pub api_key_env: Option<String>,
    /// A replica with this many tokens (prompt + `max_tokens` not yet generated) outstanding
    /// counts as saturated: requests go to another replica or the next pool.
    pub max_outstanding_tokens: Option<u64>,
    /// `remote`: TCP connect timeout (default 2000 ms).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// `remote`: time until the upstream's response headers (default 30 s).
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// `remote`: longest silence between two chunks of a stream (default 60 s).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Silence (no token for any request of the replica) before a request's first token that
    /// counts the replica as stalled: the request moves to another replica and the stalled one
    /// is taken out at once. Default 10 000 ms for `remote` pools, off for `local` ones (whose
    /// engine runs in this process); 0 turns it off.
    pub first_token_timeout_ms: Option<u64>,
    /// Silence between two tokens of a streaming request (and from every other request of the
    /// replica) that counts the replica as stalled: the request ends with an error and the
    /// replica is taken out at once. Default 10 000 ms for `remote` pools, off for `local`
    /// ones; 0 turns it off.
    pub inter_token_timeout_ms: Option<u64>,
    /// Consecutive failures (transport errors, failed health checks) that take a replica out.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// How long a replica stays out before it is tried again (default 5000 ms).
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
}

impl PoolConfig {
    /// The pool of a model that names none: one replica on its `device`.
    pub fn implicit_local(device: &str) -> Self {
        Self {
            name: "local".to_string(),
            kind: PoolKindConfig::Local,
            devices: vec![device.to_string()],
            urls: Vec::new(),
            api_key_env: None,
            max_outstanding_tokens: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            response_timeout_ms: default_response_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            first_token_timeout_ms: None,
            inter_token_timeout_ms: None,
            failure_threshold: default_failure_threshold(),
            open_ms: default_open_ms(),
        }
    }

    /// The pool's stall timeouts, with its kind's defaults.
    pub fn stall_timeouts(&self) -> routing::StallTimeouts {
        let default = match self.kind {
            PoolKindConfig::Local => 0,
            PoolKindConfig::Remote => DEFAULT_REMOTE_STALL_MS,
        };
        let limit = |ms: Option<u64>| match ms.unwrap_or(default) {
            0 => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        };
        routing::StallTimeouts {
            first_token: limit(self.first_token_timeout_ms),
            inter_token: limit(self.inter_token_timeout_ms),
        }
    }

    /// The pool's circuit-breaker settings.
    pub fn breaker(&self) -> routing::BreakerSettings {
        routing::BreakerSettings {
            failure_threshold: self.failure_threshold.max(1),
            open_for: std::time::Duration::from_millis(self.open_ms),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
/// Where a pool's replicas run.
pub enum PoolKindConfig {
    /// In this process, one replica per device.
    Local,
    /// Behind OpenAI-compatible URLs.
    Remote,
}

/// `[routing]`: health checks of remote replicas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Time between two health checks of each remote replica (default 2000 ms).
    #[serde(default = "default_health_interval_ms")]
    pub health_interval_ms: u64,
    /// Time a health check may take (default 1000 ms).
    #[serde(default = "default_health_timeout_ms")]
    pub health_timeout_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            health_interval_ms: default_health_interval_ms(),
            health_timeout_ms: default_health_timeout_ms(),
        }
    }
}

/// A remote replica silent this long is stalled: long against a token's tens of milliseconds
/// and a long prompt's prefill, short against a client's patience (`request_timeout_secs`, 600 by default).
const DEFAULT_REMOTE_STALL_MS: u64 = 10_000;

fn default_connect_timeout_ms() -> u64 {
    2000
}

fn default_response_timeout_ms() -> u64 {
    30_000
}

fn default_idle_timeout_ms() -> u64 {
    60_000
}

fn default_failure_threshold() -> u32 {
    2
}

fn default_open_ms() -> u64 {
    5000
}

fn default_health_interval_ms() -> u64 {
    2000
}

fn default_health_timeout_ms() -> u64 {
    1000
}

impl GatewayConfig {
    /// Pools: unique names, the right replicas for their kind, known devices, and models that
    /// name only configured pools.
    pub(super) fn validate_pools(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut names = std::collections::HashSet::new();
        for pool in &self.pools {
            if !names.insert(pool.name.as_str()) {
                return invalid(format!("pool `{}` is configured twice", pool.name));
            }
            match pool.kind {
                PoolKindConfig::Local => {
                    if pool.devices.is_empty() || !pool.urls.is_empty() {
                        return invalid(format!(
                            "pool `{}`: a local pool lists `devices` (and no `urls`)",
                            pool.name
                        ));
                    }
                    for device in &pool.devices {
                        parse_device(device).map_err(|reason| {
                            ConfigError::Invalid(format!("pool `{}`: {reason}", pool.name))
                        })?;
                    }
                }
                PoolKindConfig::Remote => {
                    if pool.urls.is_empty() || !pool.devices.is_empty() {
                        return invalid(format!(
                            "pool `{}`: a remote pool lists `urls` (and no `devices`)",
                            pool.name
                        ));
                    }
                }
            }
        }
        for model in &self.models {
            let named = model.pools.iter().chain(model.tiers.values().flatten());
            for name in named {
                if !names.contains(name.as_str()) {
                    return invalid(format!(
                        "model `{}` names pool `{name}`, which is not configured",
                        model.id
                    ));
                }
            }
            if model.pools.is_empty() && !model.tiers.is_empty() {
                return invalid(format!(
                    "model `{}`: `tiers` choose among pools; list the default `pools` too",
                    model.id
                ));
            }
            for (tier, pools) in &model.tiers {
                if pools.is_empty() {
                    return invalid(format!(
                        "model `{}`: tier `{tier}` lists no pools",
                        model.id
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every pool `model` may use: its `pools`, then those only its tiers name.
    pub fn pools_of(&self, model: &ModelConfig) -> Vec<PoolConfig> {
        if model.pools.is_empty() {
            return vec![PoolConfig::implicit_local(&model.device)];
        }
        let mut names: Vec<&String> = model.pools.iter().collect();
        for name in model.tiers.values().flatten() {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
            .into_iter()
            .filter_map(|name| self.pools.iter().find(|p| &p.name == name).cloned())
            .collect()
    }
}

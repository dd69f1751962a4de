//! `[control_plane]`: the store that holds tenants, projects and keys once operators manage them
//! through the admin API (absent: the configuration file's `[[tenants]]` are the only source).

use std::path::PathBuf;

use serde::Deserialize;

use super::*;

/// `[control_plane]`: where tenants, projects, keys and the audit log live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// `true`: the store is the source of tenants and keys (seeded from `[[tenants]]` on its
    /// first start), and the admin API can change them live. Default `false`.
    #[serde(default)]
    pub enabled: bool,
    /// SQLite file for one process; absent: `control-plane.db` in the data directory. Not used
    /// with `url`.
    pub path: Option<PathBuf>,
    /// `postgres://user:password@host:port/db`: the store in PostgreSQL, shared by every
    /// replica (the ledger's server will do: its tables are apart). `GATEWAY_CONTROL_PLANE_URL`
    /// takes its place when set.
    pub url: Option<String>,
    /// `power-loss` (default: every commit synced) or `process-crash` (SQLite: commits synced
    /// at checkpoints; they survive the process being killed, not a power cut). PostgreSQL
    /// decides for itself (`synchronous_commit`).
    #[serde(default)]
    pub durability: ::ledger::Durability,
    /// How often a replica asks the store whether anything changed (ms); a change reaches
    /// every replica within this plus one reload.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// How often keys' last-use times are written to the store (seconds).
    #[serde(default = "default_last_used_flush_secs")]
    pub last_used_flush_secs: u64,
    /// ISO 4217 code of the currency prices are set in (integer minor units: cents, won).
    #[serde(default = "default_currency")]
    pub currency: String,
    /// How long a request's reservation against grants and budgets lasts unless its replica
    /// renews it (every third of it, while the request runs): a replica killed mid-request
    /// gives its reservations back within this.
    #[serde(default = "default_allowance_lease_secs")]
    pub allowance_lease_secs: u64,
    /// Percent of a grant's or budget's amount at which its use is reported: a counter
    /// (`gateway_allowance_threshold_crossings_total`) and, if set, a POST to
    /// `alert_webhook_url`.
    #[serde(default = "default_alert_thresholds_percent")]
    pub alert_thresholds_percent: Vec<u8>,
    /// Where crossings are POSTed (JSON), by whichever replica settled the request that crossed
    /// them. Only the operator sets it, in this file: no tenant can point the gateway at a URL.
    pub alert_webhook_url: Option<String>,
    /// How long a stored response (`/v1/responses` with `store`) is kept (hours); it can be
    /// deleted sooner (`DELETE /v1/responses/{id}`).
    #[serde(default = "default_responses_retention_hours")]
    pub responses_retention_hours: u64,
}

fn default_responses_retention_hours() -> u64 {
    // OpenAI's own: 30 days.
    720
}

fn default_alert_thresholds_percent() -> Vec<u8> {
    vec![80, 100]
}

fn default_allowance_lease_secs() -> u64 {
    30
}

fn default_currency() -> String {
    "USD".into()
}

fn default_poll_interval_ms() -> u64 {
    500
}

fn default_last_used_flush_secs() -> u64 {
    10
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            path: None,
            url: None,
            durability: ::ledger::Durability::default(),
            poll_interval_ms: default_poll_interval_ms(),
            last_used_flush_secs: default_last_used_flush_secs(),
            currency: default_currency(),
            allowance_lease_secs: default_allowance_lease_secs(),
            alert_thresholds_percent: default_alert_thresholds_percent(),
            alert_webhook_url: None,
            responses_retention_hours: default_responses_retention_hours(),
        }
    }
}

impl ControlPlaneConfig {
    /// The PostgreSQL URL, if the store is shared (`GATEWAY_CONTROL_PLANE_URL` over the file).
    pub fn postgres_url(&self) -> Option<String> {
        super::ledger::env_or("GATEWAY_CONTROL_PLANE_URL", &self.url)
    }

    /// Where the SQLite store lives.
    pub fn resolved_path(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| default_data_dir().join("control-plane.db"))
    }
}

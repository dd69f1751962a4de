//! `[ledger]`: the durable usage ledger.

use std::path::PathBuf;

use serde::Deserialize;

use super::*;

/// `[ledger]`: the durable usage ledger.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// `false`: no ledger (usage is then only in memory and in metrics; the daily budget resets
    /// on restart). Meant for benchmarks.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// SQLite file; absent: `usage.db` in the data directory (`GATEWAY_DATA_DIR`, else
    /// `$XDG_DATA_HOME/gateway` or `~/.local/share/gateway`). Not used with `url`.
    pub path: Option<PathBuf>,
    /// `postgres://user:password@host:port/db`: the ledger in PostgreSQL, shared by every
    /// replica (`/admin/usage` then answers for the fleet). `GATEWAY_LEDGER_URL` takes its
    /// place when set. Absent: the SQLite file.
    pub url: Option<String>,
    /// `power-loss` (default: every commit synced) or `process-crash` (no sync per commit).
    #[serde(default)]
    pub durability: ::ledger::Durability,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
            url: None,
            durability: ::ledger::Durability::default(),
        }
    }
}

impl LedgerConfig {
    /// The PostgreSQL URL, if the ledger is shared (`GATEWAY_LEDGER_URL` over the file).
    pub fn postgres_url(&self) -> Option<String> {
        env_or("GATEWAY_LEDGER_URL", &self.url)
    }

    /// Where the ledger lives.
    pub fn resolved_path(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| default_data_dir().join("usage.db"))
    }
}

/// The environment variable `name` when set and not empty, else `value`.
pub(super) fn env_or(name: &str, value: &Option<String>) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| value.clone())
}

/// The gateway's state directory (the ledger's default home).
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GATEWAY_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("gateway");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/gateway"),
        None => PathBuf::from("gateway-data"),
    }
}

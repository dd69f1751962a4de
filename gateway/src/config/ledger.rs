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
    /// `$XDG_DATA_HOME/gateway` or `~/.local/share/gateway`).
    pub path: Option<PathBuf>,
    /// `power-loss` (default: every commit synced) or `process-crash` (no sync per commit).
    #[serde(default)]
    pub durability: ::ledger::Durability,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
            durability: ::ledger::Durability::default(),
        }
    }
}

impl LedgerConfig {
    /// Where the ledger lives.
    pub fn resolved_path(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| default_data_dir().join("usage.db"))
    }
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

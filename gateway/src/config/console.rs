//! `[console]`: the operators' web console at `/console`.

use serde::Deserialize;

/// `[console]`: whether the console is served, and how its sessions live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve `/console` (the admin API stays whatever this says).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// A session unused this long ends (minutes).
    #[serde(default = "default_session_idle_minutes")]
    pub session_idle_minutes: u64,
    /// A session ends this long after its sign-in, used or not (hours).
    #[serde(default = "default_session_max_hours")]
    pub session_max_hours: u64,
    /// Sign-in attempts one client address may make per minute (429 beyond): an admin key
    /// cannot be guessed through the form faster than through the API.
    #[serde(default = "default_sign_in_attempts_per_minute")]
    pub sign_in_attempts_per_minute: u32,
}

fn default_enabled() -> bool {
    true
}

fn default_session_idle_minutes() -> u64 {
    30
}

fn default_session_max_hours() -> u64 {
    12
}

fn default_sign_in_attempts_per_minute() -> u32 {
    10
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            session_idle_minutes: default_session_idle_minutes(),
            session_max_hours: default_session_max_hours(),
            sign_in_attempts_per_minute: default_sign_in_attempts_per_minute(),
        }
    }
}

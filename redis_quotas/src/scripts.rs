//! The Lua scripts, one per operation, each atomic in Redis. They share a head (`common.lua`:
//! Redis's clock, the day's usage hash). `redis::Script` sends them by SHA and loads them
//! again when Redis has forgotten them (a restart).

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("lua/common.lua"),
            "\n",
            include_str!(concat!("lua/", $file))
        ))
    };
}

/// Every script, loaded once.
pub struct Scripts {
    /// Admission: all limits checked and taken at once.
    pub admit: Script,
    /// Settlement: lease released, unused tokens back, usage added.
    pub settle: Script,
    /// Lease renewal.
    pub renew: Script,
    /// A tenant's fleet-wide live state.
    pub live: Script,
    /// Today's usage seeded from a ledger.
    pub restore: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            admit: script!("admit.lua"),
            settle: script!("settle.lua"),
            renew: script!("renew.lua"),
            live: script!("live.lua"),
            restore: script!("restore.lua"),
        }
    }
}

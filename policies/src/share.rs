//! A tenant's terms in the engines' scheduling: its fair-share weight, its priority class, the
//! most of an engine it may hold, and how many of its requests may wait.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A priority band (the Kubernetes inference gateway's criticality): a higher class is served
/// first, fair share holds inside a class, and a lower class gets what the higher leaves.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Bulk work: runs in what interactive work leaves, and is shed first under load.
    Batch,
    /// A person waits for the answer (the default).
    #[default]
    Interactive,
}

impl Priority {
    /// Every class, highest first: the order in which the engines serve them.
    pub const HIGHEST_FIRST: [Priority; 2] = [Priority::Interactive, Priority::Batch];

    /// The configuration and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Batch => "batch",
            Priority::Interactive => "interactive",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A priority label that names no class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown priority `{0}`: expected `interactive` or `batch`")]
pub struct UnknownPriority(pub String);

impl FromStr for Priority {
    type Err = UnknownPriority;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "interactive" => Ok(Priority::Interactive),
            "batch" => Ok(Priority::Batch),
            other => Err(UnknownPriority(other.to_string())),
        }
    }
}

/// How the engines weigh one tenant's requests against the others'.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// Fair share relative to other tenants of the same class (1 = an equal share).
    pub weight: f64,
    /// The tenant's priority class.
    pub priority: Priority,
    /// The most of an engine's running slots the tenant may hold, 0 to 1 (`None`: no cap).
    pub max_running_share: Option<f64>,
    /// The most of an engine's KV-cache blocks the tenant may hold, 0 to 1 (`None`: no cap).
    pub max_kv_share: Option<f64>,
    /// Requests that may wait for admission in one engine; beyond it the engine refuses
    /// (`None`: the engine's own bound).
    pub max_waiting: Option<usize>,
}

impl Default for Share {
    fn default() -> Self {
        Self {
            weight: 1.0,
            priority: Priority::Interactive,
            max_running_share: None,
            max_kv_share: None,
            max_waiting: None,
        }
    }
}

impl Share {
    /// The most of `total` (slots or blocks) a `share` allows: at least one, so a capped tenant
    /// is never shut out entirely.
    pub fn cap(share: Option<f64>, total: usize) -> usize {
        match share {
            Some(s) => ((s * total as f64).floor() as usize).clamp(1, total.max(1)),
            None => total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_order_and_parse() {
        assert!(Priority::Interactive > Priority::Batch);
        assert_eq!(Priority::HIGHEST_FIRST[0], Priority::Interactive);
        assert_eq!("batch".parse::<Priority>(), Ok(Priority::Batch));
        assert!("urgent".parse::<Priority>().is_err());
        assert_eq!(Priority::default().to_string(), "interactive");
    }

    #[test]
    fn caps_round_down_but_leave_one() {
        assert_eq!(Share::cap(None, 16), 16);
        assert_eq!(Share::cap(Some(0.25), 16), 4);
        assert_eq!(Share::cap(Some(0.3), 16), 4);
        assert_eq!(Share::cap(Some(0.01), 16), 1);
        assert_eq!(Share::cap(Some(1.0), 16), 16);
    }
}

/// A project's place inside its tenant's share: the engines split what the tenant is served
/// between its projects by these weights (a second level of virtual token counters), so a busy
/// project cannot take what the tenant's other projects are owed. The tenant's share against
/// other tenants is unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectShare {
    /// The counter's label: `tenant/project` (`tenant/` for the tenant's keys of no project).
    pub label: crate::TenantId,
    /// Its weight among the tenant's projects (1 = an equal split).
    pub weight: f64,
}

//! A tenant's limits, as configured. Absent means unlimited.

use crate::Share;

/// Per-tenant limits and scheduling terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantLimits {
    /// Requests admitted per minute.
    pub requests_per_minute: Option<u32>,
    /// Prompt tokens + `max_tokens` are reserved at admission; unused tokens are returned.
    pub tokens_per_minute: Option<u32>,
    /// Requests in flight at once.
    pub max_concurrent: Option<u32>,
    /// Real tokens (prompt + completion) per UTC day.
    pub daily_tokens: Option<u64>,
    /// Its terms in the engines' scheduling: weight, priority class, caps, queue bound.
    pub share: Share,
}

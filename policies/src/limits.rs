//! A tenant's limits, as configured. Absent means unlimited.

/// Per-tenant limits and fair-share weight.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantLimits {
    /// Requests admitted per minute.
    pub requests_per_minute: Option<u32>,
    /// Prompt tokens + `max_tokens` are reserved at admission; unused tokens are returned.
    pub tokens_per_minute: Option<u32>,
    /// Requests in flight at once.
    pub max_concurrent: Option<u32>,
    /// Real tokens (prompt + completion) per UTC day.
    pub daily_tokens: Option<u64>,
    /// Fair share relative to other tenants.
    pub weight: f64,
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self {
            requests_per_minute: None,
            tokens_per_minute: None,
            max_concurrent: None,
            daily_tokens: None,
            weight: 1.0,
        }
    }
}

//! Tenants and their credentials (and, later, quotas, rate limits, budgets and fair-share
//! weights). This crate knows nothing of HTTP.

#![warn(missing_docs)]

pub mod keys;
pub mod limits;
pub mod quota;
pub mod tenant;
pub mod token_limiter;

pub use keys::{ApiKey, KeyDigest, KeyError, KeyId, KeyStore, ResolvedKey};
pub use limits::TenantLimits;
pub use quota::{
    utc_day, Admission, DailyUsage, LimitState, QuotaBook, RateLimitStatus, RejectReason, Rejection,
};
pub use tenant::{ModelAllowList, TenantId, TenantSpec};

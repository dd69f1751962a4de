//! Tenants, their credentials, quotas, rate limits and budgets. This crate knows nothing of
//! HTTP.

#![warn(missing_docs)]

mod decision;
mod fair_share;
mod keys;
mod limits;
mod quota;
mod share;
mod store;
mod tenant;
mod token_limiter;

// The surface other crates use; the modules stay private.

pub use fair_share::VirtualTokenCounters;
pub use keys::{ApiKey, KeyDigest, KeyError, KeyGrant, KeyId, KeyStore, ResolvedKey};
pub use limits::TenantLimits;
pub use quota::{
    utc_day, Admission, Ask, DailyUsage, LimitState, QuotaBook, RateLimitStatus, RejectReason,
    Rejection, Settle, Settlement,
};
pub use share::{Priority, ProjectShare, Share, UnknownPriority};
pub use store::{Admitting, QuotaStore, Refusal, StoreFuture, StoreHealth};
pub use tenant::{ModelAllowList, TenantId, TenantSpec};

//! Tenants and their credentials (and, later, quotas, rate limits, budgets and fair-share
//! weights). This crate knows nothing of HTTP.

pub mod keys;
pub mod tenant;

pub use keys::{ApiKey, KeyDigest, KeyError, KeyId, KeyStore, ResolvedKey};
pub use tenant::{ModelAllowList, TenantId, TenantSpec};

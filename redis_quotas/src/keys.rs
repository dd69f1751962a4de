//! The Redis keys of one tenant. Every key carries the tenant in a hash tag (`{tenant}`), so a
//! Redis Cluster keeps them in one slot and one script may touch them all.

use policies::TenantId;

/// The keys of one tenant's quota state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantKeys {
    /// Requests per minute: the GCRA's theoretical arrival time, in ms of Redis's clock.
    pub requests: String,
    /// Tokens per minute: likewise.
    pub tokens: String,
    /// Requests in flight: a sorted set of lease ids scored by their expiry.
    pub leases: String,
    /// Today's usage: a hash (`day`, `requests`, `prompt_tokens`, `completion_tokens`,
    /// `rejections`).
    pub day: String,
}

impl TenantKeys {
    /// The keys of `tenant` under `namespace`.
    pub fn new(namespace: &str, tenant: &TenantId) -> Self {
        let key = |name: &str| format!("{namespace}:{{{}}}:{name}", tenant.as_str());
        Self {
            requests: key("requests"),
            tokens: key("tokens"),
            leases: key("leases"),
            day: key("day"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_tenant_shares_its_hash_tag_and_namespace() {
        let keys = TenantKeys::new("gw", &TenantId::new("acme-labs").unwrap());
        for key in [&keys.requests, &keys.tokens, &keys.leases, &keys.day] {
            assert!(key.starts_with("gw:{acme-labs}:"), "{key}");
        }
        let other = TenantKeys::new("gw", &TenantId::new("acme").unwrap());
        assert_ne!(keys.leases, other.leases);
    }
}

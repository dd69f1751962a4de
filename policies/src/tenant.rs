//! Tenants: who may call the gateway and which models they may use.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A tenant's identifier: 1 to 64 characters of `[A-Za-z0-9_.-]`, so it is safe in metric labels,
/// log fields and file names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid tenant id `{0}`: use 1-64 characters of letters, digits, `_`, `.` or `-`")]
/// A string that is not a valid tenant id.
pub struct InvalidTenantId(pub String);

impl TenantId {
    /// The id, if `id` is 1-64 characters of `[A-Za-z0-9_.-]`.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidTenantId> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if valid {
            Ok(Self(id))
        } else {
            Err(InvalidTenantId(id))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The quota scope `self/child` (a project inside the tenant, a key inside a project):
    /// counted apart from the tenant itself. `/` is never in a tenant's own id, so a scope
    /// cannot be mistaken for a tenant; it stays safe in metric labels and Redis keys.
    pub fn scope(&self, child: &str) -> TenantId {
        Self(format!("{}/{child}", self.0))
    }
}

impl std::str::FromStr for TenantId {
    type Err = InvalidTenantId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidTenantId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<TenantId> for String {
    fn from(id: TenantId) -> Self {
        id.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which models a tenant may use: a list of ids, `"*"` meaning all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelAllowList(Vec<String>);

impl Default for ModelAllowList {
    fn default() -> Self {
        Self::all()
    }
}

impl ModelAllowList {
    /// Every model.
    pub fn all() -> Self {
        Self(vec!["*".to_string()])
    }

    /// Only these models.
    pub fn only(models: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self(models.into_iter().map(Into::into).collect())
    }

    /// Whether `model` may be used.
    pub fn allows(&self, model: &str) -> bool {
        self.0.iter().any(|m| m == "*" || m == model)
    }
}

/// A tenant as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSpec {
    /// The tenant's id.
    pub id: TenantId,
    /// The models it may use.
    pub models: ModelAllowList,
    /// Its limits and fair-share weight.
    pub limits: crate::limits::TenantLimits,
    /// The tenant's service tier (e.g. `premium`): models may prefer other pools for it.
    pub tier: Option<String>,
    /// The prefix-cache sharing group it belongs to: tenants of one group (who agreed to it)
    /// reuse each other's cached prompt blocks; `None`, its cache is its own.
    pub prefix_cache_group: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_validated() {
        assert!(TenantId::new("acme-labs_2.eu").is_ok());
        assert!(TenantId::new("").is_err());
        assert!(TenantId::new("a b").is_err());
        assert!(TenantId::new("x".repeat(65)).is_err());
        assert!(TenantId::new("é").is_err());
        let scope = TenantId::new("acme").unwrap().scope("radiology");
        assert_eq!(scope.as_str(), "acme/radiology");
        assert!(
            TenantId::new(scope.as_str()).is_err(),
            "a scope is never a tenant's id"
        );
    }

    #[test]
    fn allow_list() {
        assert!(ModelAllowList::all().allows("anything"));
        let only = ModelAllowList::only(["m1"]);
        assert!(only.allows("m1"));
        assert!(!only.allows("m2"));
    }
}

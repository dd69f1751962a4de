//! Who writes and reads: an admin key's role and, for a tenant-admin, its tenant. What each role
//! may do is decided here, once, for the store's writes and the gateway's reads alike.

use std::fmt;

use policies::TenantId;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Calls the model API as its tenant (and project); no admin route.
    Inference,
    /// Runs its own tenant: projects, keys, usage, audit; never another tenant, never limits
    /// above the operator's.
    TenantAdmin,
    /// Reads everything, writes nothing.
    Auditor,
    /// Everything.
    Operator,
}

impl Role {
    /// Its name in the API and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Inference => "inference",
            Role::TenantAdmin => "tenant_admin",
            Role::Auditor => "auditor",
            Role::Operator => "operator",
        }
    }

    /// Whether the key is for `/admin/*` rather than the model API.
    pub fn is_admin(self) -> bool {
        self != Role::Inference
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The admin key behind a call, and where the call came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The key's id (`config-file` for the seed from the configuration, `admin-<8 hex>` for the
    /// configuration's admin keys).
    pub key_id: String,
    /// Its role (never [`Role::Inference`]).
    pub role: Role,
    /// A tenant-admin's tenant.
    pub tenant: Option<TenantId>,
    /// The client's address.
    pub address: Option<String>,
}

impl Actor {
    /// The configuration file, seeding the store at first start.
    pub fn config_file() -> Self {
        Self {
            key_id: "config-file".into(),
            role: Role::Operator,
            tenant: None,
            address: None,
        }
    }

    /// Whether it may read what concerns `tenant`.
    pub fn may_read(&self, tenant: &TenantId) -> bool {
        match self.role {
            Role::Operator | Role::Auditor => true,
            Role::TenantAdmin => self.tenant.as_ref() == Some(tenant),
            Role::Inference => false,
        }
    }

    /// Whether it may read what concerns no single tenant, or every tenant (the pools, the
    /// whole audit log, operator keys).
    pub fn may_read_all(&self) -> bool {
        matches!(self.role, Role::Operator | Role::Auditor)
    }

    /// Refused unless it may read `tenant`.
    pub fn check_read(&self, tenant: &TenantId) -> Result<(), StoreError> {
        match self.may_read(tenant) {
            true => Ok(()),
            false => Err(self.forbidden(format!("tenant `{tenant}`"))),
        }
    }

    /// Refused unless it may manage `tenant`'s projects and keys.
    pub(crate) fn check_manage(&self, tenant: &TenantId) -> Result<(), StoreError> {
        match self.role {
            Role::Operator => Ok(()),
            Role::TenantAdmin if self.tenant.as_ref() == Some(tenant) => Ok(()),
            _ => Err(self.forbidden(format!("changing tenant `{tenant}`"))),
        }
    }

    /// Refused unless it is an operator.
    pub(crate) fn check_operator(&self, what: &str) -> Result<(), StoreError> {
        match self.role {
            Role::Operator => Ok(()),
            _ => Err(self.forbidden(what.to_string())),
        }
    }

    fn forbidden(&self, what: String) -> StoreError {
        StoreError::Forbidden(format!(
            "a {} key may not do this: {what}",
            self.role.as_str().replace('_', "-")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(role: Role, tenant: Option<&str>) -> Actor {
        Actor {
            key_id: "k".into(),
            role,
            tenant: tenant.map(|t| t.parse().unwrap()),
            address: None,
        }
    }

    #[test]
    fn each_role_reads_and_manages_what_it_should() {
        let (acme, beta): (TenantId, TenantId) = ("acme".parse().unwrap(), "beta".parse().unwrap());
        let admin = actor(Role::TenantAdmin, Some("acme"));
        assert!(admin.may_read(&acme) && !admin.may_read(&beta) && !admin.may_read_all());
        assert!(admin.check_manage(&acme).is_ok() && admin.check_manage(&beta).is_err());
        assert!(admin.check_operator("x").is_err());
        let auditor = actor(Role::Auditor, None);
        assert!(auditor.may_read(&beta) && auditor.may_read_all());
        assert!(auditor.check_manage(&acme).is_err());
        let operator = actor(Role::Operator, None);
        assert!(operator.check_manage(&beta).is_ok() && operator.check_operator("x").is_ok());
        assert!(!actor(Role::Inference, Some("acme")).may_read(&acme));
    }
}

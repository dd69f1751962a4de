//! LoRA adapters registered through the admin API: who owns each (a tenant, or every tenant when
//! an operator shares it), which model it adapts and where its file comes from. An uploaded
//! file is kept in the store beside the registry entry (an [`ApiObject`] of kind
//! [`ADAPTER_FILE`]), so every replica of the fleet can fetch it; an operator may instead point
//! at a file on a path every replica sees. The entry is a document of the snapshot replicas
//! cache: registering or deleting one reaches every replica within a poll.

use policies::TenantId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::actor::Actor;
use crate::api_objects::ApiObject;
use crate::backend::ADAPTER;
use crate::error::{Result, StoreError};
use crate::model::{now_ms, random_id};
use crate::writes::{live_tenant, read, store};
use crate::ControlPlane;

/// The kind of API object holding an uploaded adapter's file (base64 of the GGUF bytes).
pub const ADAPTER_FILE: &str = "adapter_file";

/// The longest adapter id.
pub const MAX_ADAPTER_ID: usize = 64;

/// Where an adapter's file is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AdapterSource {
    /// Uploaded: kept in the store as an [`ADAPTER_FILE`] object.
    Upload {
        /// The object's id (set by the store at registration: each upload has its own, so a
        /// refused registration never touches another adapter's file).
        #[serde(default)]
        file: String,
    },
    /// A file an operator named, inside the gateway's configured adapter directory.
    Path {
        /// The file, as the operator gave it (checked against the directory by the gateway).
        path: String,
    },
}

/// A registered adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdapterEntry {
    /// What requests name it by (alone, or as `<model>:<id>`).
    pub id: String,
    /// The model it adapts.
    pub model: String,
    /// The tenant that owns it (only that tenant sees and uses it); absent: shared by an
    /// operator with every tenant that may use the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub tenant: Option<TenantId>,
    /// Where its file is.
    pub source: AdapterSource,
    /// SHA-256 of the file (hex): replicas check what they fetch against it.
    pub sha256: String,
    /// Size of the file.
    pub bytes: u64,
    /// Its rank, as read at registration.
    pub rank: u32,
    /// When it was registered (Unix ms).
    #[serde(default)]
    pub created_at_ms: i64,
    /// When it was deleted (Unix ms); a deleted adapter serves no request and its id may be
    /// registered again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at_ms: Option<i64>,
}

impl AdapterEntry {
    /// Whether it still serves requests.
    pub fn is_live(&self) -> bool {
        self.deleted_at_ms.is_none()
    }

    /// The tenant its file object is stored under (`""`: a shared adapter).
    pub fn file_owner(&self) -> &str {
        self.tenant.as_ref().map_or("", TenantId::as_str)
    }
}

/// Refused unless `id` is 1-64 of `A-Z a-z 0-9 . _ -` (no `:`, which separates a model from an
/// adapter in a request's `model`).
pub fn check_adapter_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ADAPTER_ID
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    match ok {
        true => Ok(()),
        false => Err(StoreError::invalid(
            "id",
            format!("`id` must be 1-{MAX_ADAPTER_ID} of A-Z a-z 0-9 . _ - (it is what requests name as their `model`)"),
        )),
    }
}

impl Actor {
    /// Refused unless it may register or delete an adapter owned by `tenant` (`None`: shared),
    /// with a file from `source`.
    pub fn check_adapter(&self, tenant: Option<&TenantId>, source: &AdapterSource) -> Result<()> {
        if matches!(source, AdapterSource::Path { .. }) {
            self.check_operator("registering an adapter by path (upload its file instead)")?;
        }
        match tenant {
            Some(tenant) => self.check_manage(tenant),
            None => self.check_operator("sharing an adapter with every tenant"),
        }
    }
}

impl ControlPlane {
    /// Registers `entry` (its `created_at_ms` set now), with the base64 of its file for an
    /// upload (stored first, as an object of its own: an entry never names a missing file).
    /// 409 if a live adapter has its id. Audited as `adapter.create`.
    pub fn register_adapter(
        &self,
        actor: &Actor,
        mut entry: AdapterEntry,
        file_base64: Option<String>,
    ) -> Result<AdapterEntry> {
        check_adapter_id(&entry.id)?;
        actor.check_adapter(entry.tenant.as_ref(), &entry.source)?;
        entry.created_at_ms = now_ms();
        entry.deleted_at_ms = None;
        let file = match (&mut entry.source, file_base64) {
            (AdapterSource::Upload { file }, Some(body)) => {
                *file = random_id("adapterfile");
                let object = ApiObject {
                    kind: ADAPTER_FILE.into(),
                    id: file.clone(),
                    tenant: entry.file_owner().into(),
                    created_ms: entry.created_at_ms,
                    expires_ms: None,
                    body,
                };
                self.put_api_object(&object)?;
                Some(object)
            }
            (AdapterSource::Path { .. }, None) => None,
            _ => {
                return Err(StoreError::invalid(
                    "file",
                    "an uploaded adapter comes with its file, a path adapter without",
                ))
            }
        };
        let written = self.write(|tx| {
            if let Some(tenant) = &entry.tenant {
                live_tenant(tx, tenant)?;
            }
            if read::<AdapterEntry>(tx, ADAPTER, &entry.id)?.is_some_and(|e| e.is_live()) {
                return Err(StoreError::Conflict(format!(
                    "adapter `{}` exists already",
                    entry.id
                )));
            }
            store(tx, ADAPTER, &entry.id, entry.tenant.as_ref(), &entry)?;
            let audit = actor.entry(
                "adapter.create",
                format!("adapter:{}", entry.id),
                entry.tenant.as_ref(),
                None,
                serde_json::to_value(&entry).ok(),
            );
            tx.audit(&audit)?;
            Ok(entry.clone())
        });
        if written.is_err() {
            if let Some(file) = file {
                // The entry did not land: its file must not linger.
                let _ = self.delete_api_object(ADAPTER_FILE, &file.tenant, &file.id);
            }
        }
        written
    }

    /// Deletes the live adapter `id` (its owner's admins or an operator; a shared one:
    /// operators), and its uploaded file. Audited as `adapter.delete`.
    pub fn delete_adapter(&self, actor: &Actor, id: &str) -> Result<AdapterEntry> {
        let deleted = self.write(|tx| {
            let entry = read::<AdapterEntry>(tx, ADAPTER, id)?
                .filter(AdapterEntry::is_live)
                .ok_or_else(|| StoreError::NotFound(format!("no adapter `{id}`")))?;
            if let Some(tenant) = &entry.tenant {
                if !actor.may_read(tenant) {
                    // Another tenant's adapter is not admitted to exist.
                    return Err(StoreError::NotFound(format!("no adapter `{id}`")));
                }
            }
            actor.check_adapter(entry.tenant.as_ref(), &entry.source)?;
            let mut after = entry.clone();
            after.deleted_at_ms = Some(now_ms());
            store(tx, ADAPTER, id, entry.tenant.as_ref(), &after)?;
            let audit = actor.entry(
                "adapter.delete",
                format!("adapter:{id}"),
                entry.tenant.as_ref(),
                serde_json::to_value(&entry).ok(),
                serde_json::to_value(&after).ok(),
            );
            tx.audit(&audit)?;
            Ok(after)
        })?;
        if let AdapterSource::Upload { file } = &deleted.source {
            self.delete_api_object(ADAPTER_FILE, deleted.file_owner(), file)?;
        }
        Ok(deleted)
    }

    /// The uploaded file of adapter `entry` (`None`: it has none, or it was deleted).
    pub fn adapter_file(&self, entry: &AdapterEntry) -> Result<Option<ApiObject>> {
        match &entry.source {
            AdapterSource::Upload { file } => {
                self.api_object(ADAPTER_FILE, entry.file_owner(), file, now_ms())
            }
            AdapterSource::Path { .. } => Ok(None),
        }
    }
}

//! The LoRA adapters this gateway serves: the configuration's `[[adapters]]` and those
//! registered through the admin API (the control-plane store's registry), and which model name a
//! request's `model` is: a model's id, an adapter's id, or `<model>:<adapter id>`. An adapter
//! owned by a tenant exists for that tenant only: any other is told no such model exists.
//!
//! An uploaded adapter's file lives in the store; each replica fetches it into its cache
//! directory (named by its SHA-256, checked) before the directory that lists it is put in force,
//! so a request never names a file this replica lacks.

use std::path::{Path, PathBuf};

use control_plane::{AdapterEntry, AdapterSource, ControlPlane, Snapshot};
use engine_api::AdapterRef;
use policies::TenantId;
use sha2::{Digest, Sha256};

use crate::config::AdapterConfig;

/// Where an adapter was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file's `[[adapters]]`.
    File,
    /// The admin API's registry (`/admin/adapters`).
    Registry,
}

impl Origin {
    /// `file` or `registry`, as the admin API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Registry => "registry",
        }
    }
}

/// An adapter a request may name.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// What the engines load: its id and file.
    pub engine: AdapterRef,
    /// The model it adapts.
    pub model: String,
    /// The tenant that owns it (`None`: shared with every tenant that may use the model).
    pub tenant: Option<String>,
    /// Where it was declared.
    pub origin: Origin,
}

impl Adapter {
    /// Whether `tenant` may see and use it (its model's allow-list is checked apart).
    pub fn visible_to(&self, tenant: &TenantId) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant.as_str())
    }
}

/// Every adapter served.
#[derive(Debug, Clone, Default)]
pub struct AdapterCatalog {
    adapters: Vec<Adapter>,
}

impl AdapterCatalog {
    /// The catalog of `[[adapters]]` (validated with the configuration).
    pub fn new(configs: &[AdapterConfig]) -> Self {
        Self {
            adapters: configs
                .iter()
                .map(|c| Adapter {
                    engine: AdapterRef {
                        id: c.id.clone(),
                        path: c.path.clone(),
                    },
                    model: c.model.clone(),
                    tenant: c.tenant.clone(),
                    origin: Origin::File,
                })
                .collect(),
        }
    }

    /// This catalog's file adapters with the registry's live ones of `snapshot` (uploaded files
    /// in `cache`). A registered id that a file adapter has is left out (registration refuses
    /// it; a file reloaded since may have taken it).
    pub fn with_registry(&self, snapshot: &Snapshot, cache: &Path) -> Self {
        let mut adapters: Vec<Adapter> = self
            .adapters
            .iter()
            .filter(|a| a.origin == Origin::File)
            .cloned()
            .collect();
        for entry in snapshot.adapters.iter().filter(|e| e.is_live()) {
            if adapters.iter().any(|a| a.engine.id == entry.id) {
                tracing::warn!(adapter = %entry.id, "a registered adapter has the id of a configured one: the configured one serves");
                continue;
            }
            adapters.push(Adapter {
                engine: AdapterRef {
                    id: entry.id.clone(),
                    path: file_of(entry, cache),
                },
                model: entry.model.clone(),
                tenant: entry.tenant.as_ref().map(TenantId::to_string),
                origin: Origin::Registry,
            });
        }
        Self { adapters }
    }

    /// The adapter `name` names, by its id or as `<model>:<id>`, if one is served.
    pub fn resolve(&self, name: &str) -> Option<&Adapter> {
        let (model, id) = match name.split_once(':') {
            Some((model, id)) => (Some(model), id),
            None => (None, name),
        };
        self.adapters
            .iter()
            .find(|a| a.engine.id == id && model.is_none_or(|m| m == a.model))
    }

    /// The adapter whose id is `id`.
    pub fn get(&self, id: &str) -> Option<&Adapter> {
        self.adapters.iter().find(|a| a.engine.id == id)
    }

    /// Every adapter served.
    pub fn all(&self) -> &[Adapter] {
        &self.adapters
    }

    /// The adapters `tenant` may see.
    pub fn visible_to<'a>(&'a self, tenant: &'a TenantId) -> impl Iterator<Item = &'a Adapter> {
        self.adapters.iter().filter(move |a| a.visible_to(tenant))
    }
}

/// The file a registered adapter is read from on this replica.
pub fn file_of(entry: &AdapterEntry, cache: &Path) -> PathBuf {
    match &entry.source {
        AdapterSource::Upload { .. } => upload_file(cache, &entry.sha256),
        AdapterSource::Path { path } => PathBuf::from(path),
    }
}

/// Where an uploaded file with this SHA-256 (hex) is kept in `cache`.
pub fn upload_file(cache: &Path, sha256: &str) -> PathBuf {
    cache.join(format!("{sha256}.gguf"))
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `bytes` to `path` whole or not at all (a temporary file renamed over it).
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Fetches every live uploaded adapter of `snapshot` whose file is not yet in `cache` from the
/// store, checking it against its SHA-256 (blocking: call from a blocking thread). Whether every
/// file is there now; what failed is logged.
pub fn fetch_files(store: &ControlPlane, snapshot: &Snapshot, cache: &Path) -> bool {
    let mut complete = true;
    for entry in snapshot.adapters.iter().filter(|e| e.is_live()) {
        if !matches!(entry.source, AdapterSource::Upload { .. }) || file_of(entry, cache).exists() {
            continue;
        }
        if let Err(why) = fetch_file(store, entry, cache) {
            complete = false;
            tracing::error!(adapter = %entry.id, error = %why, "could not fetch an uploaded adapter's file from the control-plane store: requests that name it fail here until it is fetched");
        }
    }
    complete
}

fn fetch_file(store: &ControlPlane, entry: &AdapterEntry, cache: &Path) -> Result<(), String> {
    use base64::Engine as _;
    let object = store
        .adapter_file(entry)
        .map_err(|e| e.to_string())?
        .ok_or("its file is not in the store")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(object.body.as_bytes())
        .map_err(|e| format!("stored file unreadable: {e}"))?;
    if sha256_hex(&bytes) != entry.sha256 {
        return Err("the stored file does not match its SHA-256".into());
    }
    write_file(&file_of(entry, cache), &bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> AdapterCatalog {
        let config = |id: &str, model: &str, tenant: Option<&str>| AdapterConfig {
            id: id.into(),
            model: model.into(),
            path: format!("{id}.gguf").into(),
            tenant: tenant.map(str::to_string),
        };
        AdapterCatalog::new(&[
            config("radiology", "base", Some("hospital")),
            config("contracts", "base", None),
        ])
    }

    #[test]
    fn a_name_is_an_adapter_id_or_model_colon_id() {
        let c = catalog();
        assert_eq!(c.resolve("radiology").unwrap().model, "base");
        assert_eq!(c.resolve("base:radiology").unwrap().engine.id, "radiology");
        assert!(
            c.resolve("other:radiology").is_none(),
            "another model's name"
        );
        assert!(c.resolve("base").is_none() && c.resolve("base:").is_none());
    }

    #[test]
    fn a_tenants_adapter_is_its_own() {
        let c = catalog();
        let hospital: TenantId = "hospital".parse().unwrap();
        let firm: TenantId = "firm".parse().unwrap();
        assert!(c.resolve("radiology").unwrap().visible_to(&hospital));
        assert!(!c.resolve("radiology").unwrap().visible_to(&firm));
        let seen: Vec<&str> = c.visible_to(&firm).map(|a| a.engine.id.as_str()).collect();
        assert_eq!(seen, ["contracts"]);
    }
}

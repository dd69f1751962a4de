//! `[[adapters]]`: LoRA adapters (llama.cpp's GGUF adapter format) served over a model by its
//! local engines. A request names one as its `model`, by its id or as `<model>:<id>`.

use std::path::PathBuf;

use serde::Deserialize;

/// One adapter an operator serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    /// What requests name it by (no `:`; not a model's id).
    pub id: String,
    /// The id of the model it adapts (served by local engines).
    pub model: String,
    /// Its GGUF file (relative: to the configuration file's directory), read and checked
    /// against the model by each engine on the first request that names it.
    pub path: PathBuf,
    /// The tenant that owns it: only that tenant sees and uses it. Absent: every tenant that
    /// may use the model may use it.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// `[adapter_registry]`: adapters registered through the admin API (`/admin/adapters`, with the
/// control-plane store): how large and how many, where operators' files may be, and where each
/// replica keeps the uploaded files it fetched from the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterRegistryConfig {
    /// The directory an operator's by-path registration must point inside (a path every
    /// replica sees: a shared volume). Absent: adapters can only be uploaded.
    pub directory: Option<PathBuf>,
    /// Where this replica writes the uploaded adapters' files (each named by its SHA-256);
    /// absent: `adapters/` in the data directory.
    pub cache_directory: Option<PathBuf>,
    /// The largest adapter file (bytes; uploads above are refused with 413).
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: usize,
    /// Live adapters one tenant may own.
    #[serde(default = "default_max_per_tenant")]
    pub max_per_tenant: usize,
}

fn default_max_file_bytes() -> usize {
    256 << 20
}

fn default_max_per_tenant() -> usize {
    32
}

impl Default for AdapterRegistryConfig {
    fn default() -> Self {
        Self {
            directory: None,
            cache_directory: None,
            max_file_bytes: default_max_file_bytes(),
            max_per_tenant: default_max_per_tenant(),
        }
    }
}

impl AdapterRegistryConfig {
    /// Where uploaded adapters' files are kept on this replica.
    pub fn cache_directory(&self) -> PathBuf {
        self.cache_directory
            .clone()
            .unwrap_or_else(|| super::default_data_dir().join("adapters"))
    }
}

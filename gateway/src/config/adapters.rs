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

//! `[[models]]`: the models served, their engines and devices.

use std::path::PathBuf;

use engine_api::SamplingDefaults;
use local_engine::WeightFormat;
use local_engine::{CoreConfig, DeviceSpec};
use model_fetch::{DEFAULT_MODEL, DEFAULT_MODEL_ID, DEFAULT_MODEL_SAMPLING};
use serde::Deserialize;

/// A model served by a local engine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The id clients put in `model`. Absent for a GGUF file: a slug of the file's
    /// `general.name`, else of its file name (`name_models`).
    #[serde(default)]
    pub id: String,
    /// `gguf` (default): a candle engine on a GGUF file. `embedding`: a sentence-embedding
    /// model for `/v1/embeddings`. `synthetic`: a benchmark tool that streams tokens without
    /// running a model (see `[models.synthetic]`).
    #[serde(default)]
    pub kind: ModelKind,
    /// Behaviour of a `synthetic` model.
    pub synthetic: Option<SyntheticConfig>,
    /// GGUF file. Absent: the embedded default model, fetched into the cache if missing.
    pub path: Option<PathBuf>,
    /// Where the model runs when it names no `pools`: `cpu`, `cuda:N` (feature `cuda`),
    /// `metal:N` (feature `metal`).
    #[serde(default = "default_device")]
    pub device: String,
    /// Pools serving this model, in order of preference (absent: one local replica on
    /// `device`, in a pool named `local`).
    #[serde(default)]
    pub pools: Vec<String>,
    /// Per tenant tier, the pools in that tier's order (e.g. `premium = ["gpu-h100", "npu"]`).
    #[serde(default)]
    pub tiers: std::collections::BTreeMap<String, Vec<String>>,
    /// The model's id on remote upstreams (default: `id`).
    pub upstream_model: Option<String>,
    /// Context window of remote replicas (local engines read it from the model; default 8192).
    pub context_length: Option<usize>,
    /// `q8_0` (re-quantize coarser formats at load, the fast CPU path) or `as-stored`.
    #[serde(default)]
    pub weights: WeightsConfig,
    /// Tokens per forward pass (decodes and prefill chunks together).
    pub max_batch_tokens: Option<usize>,
    /// Sequences in the running batch.
    pub max_running: Option<usize>,
    /// Largest prompt chunk of one sequence per step.
    pub prefill_chunk: Option<usize>,
    /// KV cache size in tokens; absent: the model's context length.
    pub kv_cache_tokens: Option<usize>,
    /// Admit across tenants by weighted virtual token counters, and preempt for a tenant short
    /// of its share of slots (default); `false`: first come, first served.
    pub fair_share: Option<bool>,
    /// Tokens per step that batch-class requests may use while interactive ones run (default:
    /// 1 on a CPU, 64 on a GPU).
    pub lower_class_step_tokens: Option<usize>,
    /// Requests of one tenant that may wait for admission in one engine (default 256); a
    /// tenant's own `max_waiting` overrides it.
    pub max_waiting_per_tenant: Option<usize>,
    /// Batch-class requests are refused (503) while this many requests wait (default 64).
    pub shed_batch_above: Option<usize>,
    /// Pause a CPU step between layers to start a newly arrived interactive request when the
    /// step holds only batch work (default `true`).
    pub pause_for_higher_class: Option<bool>,
    /// Running slots batch-class requests may not take, kept for interactive arrivals
    /// (default 1).
    pub reserved_interactive_slots: Option<usize>,
    /// Keep computed prompt blocks for later requests of the same tenant (or sharing group)
    /// whose prompts start alike (default `true`).
    pub prefix_cache: Option<bool>,
    /// Seconds a request may wait at the gateway when every replica it may use is saturated
    /// (pools with `max_outstanding_tokens`), let through by priority class and weighted fair
    /// share (default 30; 0: refused at once with 503).
    pub saturated_wait_secs: Option<f64>,
    /// `[models.defaults]`: sampling settings for requests that leave them out (the request
    /// first, then these, then the GGUF's `general.sampling.*` keys, then OpenAI's defaults).
    #[serde(default)]
    pub defaults: SamplingDefaults,
}

impl ModelConfig {
    /// The sampling defaults the operator set for this model, over the embedded default
    /// model's recommendation when this model serves that file itself (`served_locally`; the
    /// GGUF's own keys come under both, from the engine). An upstream applies its own.
    pub fn sampling_defaults(&self, served_locally: bool) -> SamplingDefaults {
        let configured = self.defaults;
        let default_file = served_locally
            && self.kind == ModelKind::Gguf
            && self.path.as_ref().is_none_or(|p| {
                p.file_name()
                    .is_some_and(|name| name == DEFAULT_MODEL.file_name)
            });
        match default_file {
            true => configured.or(DEFAULT_MODEL_SAMPLING),
            false => configured,
        }
    }

    /// The waiting room's settings for saturated pools, or `None` if requests may not wait.
    pub fn saturated_wait(&self) -> Option<routing::WaitingSettings> {
        let secs = self.saturated_wait_secs.unwrap_or(30.0);
        (secs > 0.0).then(|| routing::WaitingSettings {
            max_wait: std::time::Duration::from_secs_f64(secs),
            max_waiting_per_tenant: self
                .max_waiting_per_tenant
                .unwrap_or(CoreConfig::default().max_waiting_per_tenant),
        })
    }

    /// The request core's settings on `device`: configured values over the defaults.
    pub fn core(&self, device: DeviceSpec) -> CoreConfig {
        let d = CoreConfig::default();
        CoreConfig {
            max_batch_tokens: self.max_batch_tokens.unwrap_or(d.max_batch_tokens),
            max_running: self.max_running.unwrap_or(d.max_running),
            prefill_chunk: self.prefill_chunk.unwrap_or(d.prefill_chunk),
            kv_cache_tokens: self.kv_cache_tokens.or(d.kv_cache_tokens),
            fair_share: self.fair_share.unwrap_or(d.fair_share),
            lower_class_step_tokens: Some(
                self.lower_class_step_tokens
                    .unwrap_or(device.default_lower_class_step_tokens()),
            ),
            max_waiting_per_tenant: self
                .max_waiting_per_tenant
                .unwrap_or(d.max_waiting_per_tenant),
            shed_batch_above: self.shed_batch_above.unwrap_or(d.shed_batch_above),
            pause_for_higher_class: self
                .pause_for_higher_class
                .unwrap_or(d.pause_for_higher_class),
            reserved_interactive_slots: self
                .reserved_interactive_slots
                .unwrap_or(d.reserved_interactive_slots),
            prefix_cache: self.prefix_cache.unwrap_or(d.prefix_cache),
            ..d
        }
    }
}

/// What runs behind a model id.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    #[default]
    /// A GGUF file on the local engine (the default).
    Gguf,
    /// Benchmark tool only: measures the gateway's own overhead; its output is meaningless.
    Synthetic,
    /// A sentence-embedding model (BERT family, safetensors) served at `/v1/embeddings`, on
    /// the CPU in this process; `path` is its directory (`config.json`, `tokenizer.json`,
    /// `model.safetensors`), absent: the embedded all-MiniLM-L6-v2.
    Embedding,
}

/// `[models.synthetic]`: how the benchmark engine streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Tokens per second of each stream; 0 (default): unpaced.
    #[serde(default)]
    pub tokens_per_second: f64,
    /// Tokens per request (capped by `max_tokens`); absent: exactly `max_tokens`.
    pub output_tokens: Option<usize>,
    /// Context window requests are checked against (default 8192).
    pub context_length: Option<usize>,
}

impl SyntheticConfig {
    /// The synthetic engine's options.
    pub fn options(&self) -> engine_api::SyntheticOptions {
        let d = engine_api::SyntheticOptions::default();
        engine_api::SyntheticOptions {
            tokens_per_second: self.tokens_per_second,
            output_tokens: self.output_tokens,
            context_length: self.context_length.unwrap_or(d.context_length),
            ..d
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
/// `weights`: how a GGUF's weights are kept in memory.
pub enum WeightsConfig {
    #[serde(rename = "q8_0")]
    /// Re-quantize to 8 bits (more memory, a little closer to the f32 model).
    Q8_0,
    #[default]
    /// Keep the file's quantization (4-bit stays 4-bit; the default).
    AsStored,
}

impl From<WeightsConfig> for WeightFormat {
    fn from(w: WeightsConfig) -> Self {
        match w {
            WeightsConfig::Q8_0 => WeightFormat::Q8_0,
            WeightsConfig::AsStored => WeightFormat::AsStored,
        }
    }
}

fn default_device() -> String {
    "cpu".to_string()
}

/// The embedded defaults: the chat model, and the embedding model beside it.
pub(super) fn default_models() -> Vec<ModelConfig> {
    let chat = ModelConfig {
        id: DEFAULT_MODEL_ID.to_string(),
        kind: ModelKind::Gguf,
        synthetic: None,
        path: None,
        device: default_device(),
        pools: Vec::new(),
        tiers: Default::default(),
        upstream_model: None,
        context_length: None,
        weights: WeightsConfig::default(),
        max_batch_tokens: None,
        max_running: None,
        prefill_chunk: None,
        kv_cache_tokens: None,
        fair_share: None,
        lower_class_step_tokens: None,
        max_waiting_per_tenant: None,
        shed_batch_above: None,
        pause_for_higher_class: None,
        reserved_interactive_slots: None,
        prefix_cache: None,
        saturated_wait_secs: None,
        defaults: SamplingDefaults::default(),
    };
    let embedding = ModelConfig {
        id: model_fetch::EMBEDDING_MODEL_ID.to_string(),
        kind: ModelKind::Embedding,
        ..chat.clone()
    };
    vec![chat, embedding]
}

/// Parses a device name (`cpu`, `cuda:N`, `metal:N`).
pub fn parse_device(name: &str) -> Result<DeviceSpec, String> {
    name.parse()
}

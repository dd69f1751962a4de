//! What every implementation of the supported architectures shares: the model's shape read
//! from GGUF metadata, how weights are held, and the block tables of the paged KV cache.

use candle_core::quantized::gguf_file;

/// Index of one KV block in a pool.
pub type BlockId = u32;

/// The blocks of one sequence and how many positions they hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    /// Its blocks, in position order: position `p` is in `blocks[p / block_size]`.
    pub blocks: Vec<BlockId>,
    /// Positions written so far.
    pub len: usize,
}

impl BlockTable {
    /// Positions the table can hold without another block.
    pub fn capacity(&self, block_size: usize) -> usize {
        self.blocks.len() * block_size
    }
}

/// The transformer families the engine runs, by GGUF's `general.architecture`. All are
/// pre-norm decoders with RMSNorm, RoPE, grouped-query attention and a gated MLP; they differ
/// in the details below, which the forward pass reads from [`ModelConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 1/2/3.x, Mistral (without sliding window), SmolLM, TinyLlama: RoPE on adjacent
    /// pairs (GGUF stores Q and K permuted for it), optional `rope_freqs` (Llama 3.1+).
    Llama,
    /// Qwen 2 / 2.5: biases on Q, K and V; RoPE on halves (GPT-NeoX style).
    Qwen2,
    /// Qwen 3: RMSNorm of each query and key head before RoPE (QK-norm), no biases; the head
    /// size is its own (`attention.key_length`), not hidden / heads.
    Qwen3,
    /// Phi-3 / 3.5 mini: Q, K, V fused in one tensor, gate and up fused in one; RoPE on halves.
    Phi3,
    /// EXAONE 3.x (LG AI Research): llama's tensors, RoPE on halves.
    Exaone,
    /// Gemma 3: embeddings scaled by sqrt(hidden), QK-norm, norms after attention and after
    /// the MLP too, GELU-gated MLP, and sliding-window layers (their own RoPE base) between
    /// global ones.
    Gemma3,
}

impl Architecture {
    /// Every supported `general.architecture` value.
    pub const SUPPORTED: [&'static str; 6] =
        ["llama", "qwen2", "qwen3", "phi3", "exaone", "gemma3"];

    /// The architecture GGUF's `general.architecture` names, if supported.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "llama" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            "phi3" => Self::Phi3,
            "exaone" => Self::Exaone,
            "gemma3" => Self::Gemma3,
            _ => return None,
        })
    }

    /// Its GGUF name (the prefix of its metadata keys).
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Phi3 => "phi3",
            Self::Exaone => "exaone",
            Self::Gemma3 => "gemma3",
        }
    }

    /// Which elements RoPE rotates together.
    pub fn rope_style(self) -> RopeStyle {
        match self {
            Self::Llama => RopeStyle::AdjacentPairs,
            Self::Qwen2 | Self::Qwen3 | Self::Phi3 | Self::Exaone | Self::Gemma3 => {
                RopeStyle::Halves
            }
        }
    }
}

/// Which elements of a head RoPE rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// `(2i, 2i + 1)`: llama as GGUF stores it.
    AdjacentPairs,
    /// `(i, i + head_dim / 2)`: GPT-NeoX, Qwen, Phi, EXAONE.
    Halves,
}

/// Why a file's metadata does not describe a model the engine can run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `general.architecture` names an architecture the engine does not implement.
    #[error("architecture `{0}` is not supported (supported: {supported})", supported = Architecture::SUPPORTED.join(", "))]
    UnknownArchitecture(String),
    /// A key the architecture needs is absent.
    #[error("GGUF metadata has no `{0}`")]
    MissingKey(String),
    /// A key holds the wrong type or an impossible value.
    #[error("GGUF metadata `{key}`: {problem}")]
    BadValue {
        /// The key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Most positions a model may claim (a corrupt length must not size the KV pool).
const MAX_CONTEXT: usize = 1 << 24;

/// Shape and constants of a model, read from GGUF metadata (`{architecture}.*` keys).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The family, which decides the details of the forward pass.
    pub architecture: Architecture,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Inner width of the MLP.
    pub ffn: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// Linear RoPE scaling: positions are multiplied by this (`1 / rope.scaling.factor`).
    pub rope_position_scale: f32,
    /// Longest sequence the model serves.
    pub context_length: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// What multiplies each query-key dot product: `1 / sqrt(head_dim)`, but Gemma 3 27B's
    /// `1 / sqrt(hidden / heads)`.
    pub attention_scale: f32,
    /// What multiplies the token embeddings (Gemma: `sqrt(hidden)`; others 1).
    pub embedding_scale: f32,
    /// Keys a sliding-window layer's queries see (the query's own position and those before
    /// it), and which layers slide; `None` when every layer attends to the whole sequence.
    pub sliding_window: Option<SlidingWindow>,
}

/// Gemma 3's local layers: attention over the last `window` positions, with their own RoPE.
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    /// Positions a query sees, itself included.
    pub window: usize,
    /// Per layer: whether it slides.
    pub layers: Vec<bool>,
    /// RoPE frequency base of the sliding layers (no RoPE scaling on them).
    pub rope_base: f32,
}

/// How linear-layer weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As stored in the file where a kernel reads that type (Q4_0, Q4_1, Q4_K, Q8_0 on the
    /// CPU); anything else is re-quantized to Q8_0 at load.
    #[default]
    AsStored,
    /// Re-quantized to Q8_0 at load: 8-bit weights for every projection (more bytes per
    /// decode step than 4-bit, the same values up to Q8_0's rounding).
    Q8_0,
}

impl ModelConfig {
    /// Reads the shape from GGUF metadata.
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self, ConfigError> {
        let name = string(ct, "general.architecture")?;
        let architecture =
            Architecture::from_name(&name).ok_or(ConfigError::UnknownArchitecture(name))?;
        let a = architecture.name();
        let key = |k: &str| format!("{a}.{k}");
        let n_heads = at_most(ct, &key("attention.head_count"), 1 << 12)?;
        let hidden = at_most(ct, &key("embedding_length"), 1 << 20)?;
        let n_kv_heads = match ct.metadata.get(&key("attention.head_count_kv")) {
            Some(_) => at_most(ct, &key("attention.head_count_kv"), 1 << 12)?,
            None => n_heads,
        };
        let head_dim = match ct.metadata.get(&key("attention.key_length")) {
            Some(_) => at_most(ct, &key("attention.key_length"), 1 << 12)?,
            None => hidden / n_heads,
        };
        if let Some(v) = ct.metadata.get(&key("attention.value_length")) {
            if v.to_u32().ok().map(|v| v as usize) != Some(head_dim) {
                return Err(bad(
                    &key("attention.value_length"),
                    "must equal the key length",
                ));
            }
        }
        if let Some(v) = ct.metadata.get(&key("rope.dimension_count")) {
            if v.to_u32().ok().map(|v| v as usize) != Some(head_dim) {
                return Err(bad(
                    &key("rope.dimension_count"),
                    "RoPE on part of a head is not supported",
                ));
            }
        }
        let vocab_size = match ct.metadata.get(&key("vocab_size")) {
            Some(_) => at_most(ct, &key("vocab_size"), 1 << 24)?,
            None => match ct.tensor_infos.get("token_embd.weight") {
                Some(t) => *t.shape.dims().first().unwrap_or(&0),
                None => match ct.metadata.get("tokenizer.ggml.tokens") {
                    Some(v) => v.to_vec().map(|v| v.len()).unwrap_or(0),
                    None => return Err(ConfigError::MissingKey(key("vocab_size"))),
                },
            },
        };
        let rope_position_scale = match ct
            .metadata
            .get(&key("rope.scaling.type"))
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
        {
            None | Some("none") => 1.0,
            Some("linear") => {
                let factor = float(ct, &key("rope.scaling.factor"))?;
                if !(factor.is_finite() && factor > 0.0) {
                    return Err(bad(&key("rope.scaling.factor"), "must be positive"));
                }
                1.0 / factor
            }
            Some(other) => {
                return Err(bad(
                    &key("rope.scaling.type"),
                    &format!("`{other}` is not supported (only linear)"),
                ))
            }
        };
        let mut context_length = positive(ct, &key("context_length"))?;
        if context_length > MAX_CONTEXT {
            return Err(bad(
                &key("context_length"),
                &format!("{context_length} is beyond the {MAX_CONTEXT} positions served"),
            ));
        }
        if architecture == Architecture::Phi3 {
            // LongRoPE files (Phi-3 128k) carry long and short factors; only the short ones,
            // valid up to the original context, are applied here.
            if let Some(v) = ct
                .metadata
                .get(&key("rope.scaling.original_context_length"))
            {
                let original = v.to_u32().map_err(|e| {
                    bad(&key("rope.scaling.original_context_length"), &e.to_string())
                })? as usize;
                context_length = context_length.min(original.max(1));
            }
        }
        // Every layer has its own tensors: more layers than tensors is a corrupt count.
        let n_layers = at_most(
            ct,
            &key("block_count"),
            ct.tensor_infos.len().clamp(1, 1 << 12),
        )?;
        let sliding_window = match ct.metadata.get(&key("attention.sliding_window")) {
            Some(_) if architecture == Architecture::Gemma3 => {
                let window = positive(ct, &key("attention.sliding_window"))?;
                // Every n-th layer global (Gemma 3: every sixth), unless the file says.
                let pattern = match ct.metadata.get(&key("attention.sliding_window_pattern")) {
                    Some(_) => positive(ct, &key("attention.sliding_window_pattern"))?,
                    None => 6,
                };
                Some(SlidingWindow {
                    window,
                    layers: (0..n_layers).map(|l| l % pattern < pattern - 1).collect(),
                    rope_base: match ct.metadata.get(&key("rope.freq_base_swa")) {
                        Some(_) => float(ct, &key("rope.freq_base_swa"))?,
                        None => 10_000.0,
                    },
                })
            }
            Some(_) => {
                return Err(bad(
                    &key("attention.sliding_window"),
                    "sliding-window attention is supported for gemma3 only",
                ))
            }
            None => None,
        };
        let attention_scale = match architecture {
            // Gemma's reference scales 27B (62 layers) by the hidden size per head.
            Architecture::Gemma3 if n_layers == 62 => 1.0 / ((hidden / n_heads) as f32).sqrt(),
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        let embedding_scale = match architecture {
            Architecture::Gemma3 => (hidden as f32).sqrt(),
            _ => 1.0,
        };
        Ok(Self {
            architecture,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            hidden,
            ffn: at_most(ct, &key("feed_forward_length"), 1 << 22)?,
            rms_eps: float(ct, &key("attention.layer_norm_rms_epsilon"))? as f64,
            rope_base: match ct.metadata.get(&key("rope.freq_base")) {
                Some(_) => float(ct, &key("rope.freq_base"))?,
                None => 10_000.0,
            },
            rope_position_scale,
            context_length,
            vocab_size,
            attention_scale,
            embedding_scale,
            sliding_window,
        })
    }

    /// Width of the attention's queries (and of its output): heads times head size.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Whether layer `layer` attends over a sliding window.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding_window
            .as_ref()
            .is_some_and(|w| w.layers.get(layer).copied().unwrap_or(false))
    }

    /// Width of the keys (and of the values).
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

fn bad(key: &str, problem: &str) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_string(),
        problem: problem.to_string(),
    }
}

fn value<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value, ConfigError> {
    ct.metadata
        .get(key)
        .ok_or_else(|| ConfigError::MissingKey(key.to_string()))
}

fn string(ct: &gguf_file::Content, key: &str) -> Result<String, ConfigError> {
    value(ct, key)?
        .to_string()
        .cloned()
        .map_err(|e| bad(key, &e.to_string()))
}

/// A count: an unsigned integer above zero and below 2^31.
fn positive(ct: &gguf_file::Content, key: &str) -> Result<usize, ConfigError> {
    let v = value(ct, key)?;
    let n = v
        .to_u32()
        .or_else(|_| v.to_u64().map(|n| n.min(u32::MAX as u64) as u32))
        .or_else(|_| v.to_i32().map(|n| n.max(0) as u32))
        .map_err(|e| bad(key, &e.to_string()))?;
    if n == 0 || n > i32::MAX as u32 {
        return Err(bad(key, &format!("{n} is out of range")));
    }
    Ok(n as usize)
}

/// A count no larger than `max` (a corrupt file must not size allocations).
fn at_most(ct: &gguf_file::Content, key: &str, max: usize) -> Result<usize, ConfigError> {
    let n = positive(ct, key)?;
    match n <= max {
        true => Ok(n),
        false => Err(bad(
            key,
            &format!("{n} is beyond the {max} this engine serves"),
        )),
    }
}

fn float(ct: &gguf_file::Content, key: &str) -> Result<f32, ConfigError> {
    let v = value(ct, key)?;
    v.to_f32()
        .or_else(|_| v.to_f64().map(|f| f as f32))
        .map_err(|e| bad(key, &e.to_string()))
}

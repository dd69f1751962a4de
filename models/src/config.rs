//! What every implementation of the llama architecture shares: the model's shape read from
//! GGUF metadata, how weights are held, and the block tables of the paged KV cache.

use candle_core::quantized::gguf_file;
use candle_core::Result;

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

/// Shape and constants of a llama model, read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
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
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// Longest sequence the model was trained for.
    pub context_length: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
}

/// How linear-layer weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As stored in the file where a kernel reads that type (Q4_0, Q4_1, Q8_0 on the CPU);
    /// anything else is re-quantized to Q8_0 at load.
    #[default]
    AsStored,
    /// Re-quantized to Q8_0 at load: 8-bit weights for every projection (more bytes per
    /// decode step than 4-bit, the same values up to Q8_0's rounding).
    Q8_0,
}

impl LlamaConfig {
    /// Reads the shape from GGUF metadata (`llama.*` keys).
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let arch = md(ct, "general.architecture")?.to_string()?.clone();
        if arch != "llama" {
            candle_core::bail!("architecture `{arch}` is not supported (only `llama`)");
        }
        let n_heads = md(ct, "llama.attention.head_count")?.to_u32()? as usize;
        let hidden = md(ct, "llama.embedding_length")?.to_u32()? as usize;
        let vocab_size = match ct.metadata.get("llama.vocab_size") {
            Some(v) => v.to_u32()? as usize,
            None => ct
                .tensor_infos
                .get("token_embd.weight")
                .map(|t| t.shape.dims()[0])
                .ok_or_else(|| candle_core::Error::Msg("no token_embd.weight".into()))?,
        };
        Ok(Self {
            n_layers: md(ct, "llama.block_count")?.to_u32()? as usize,
            n_heads,
            n_kv_heads: md(ct, "llama.attention.head_count_kv")?.to_u32()? as usize,
            head_dim: hidden / n_heads,
            hidden,
            rms_eps: md(ct, "llama.attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
            rope_base: ct
                .metadata
                .get("llama.rope.freq_base")
                .and_then(|v| v.to_f32().ok())
                .unwrap_or(10_000.0),
            context_length: md(ct, "llama.context_length")?.to_u32()? as usize,
            vocab_size,
        })
    }
}

fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    ct.metadata
        .get(key)
        .ok_or_else(|| candle_core::Error::Msg(format!("GGUF metadata has no `{key}`")))
}

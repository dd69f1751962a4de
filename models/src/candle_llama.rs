//! The llama architecture on candle's tensors and kernels: the path for GPU devices (CUDA,
//! Metal), and on the CPU a second implementation that tests hold the fast path against.
//!
//! One forward pass takes any number of sequences, each with its own new tokens, start position
//! and KV cache. The linear layers run once over the `[tokens, hidden]` matrix of the whole batch,
//! so weights are read once per step; attention runs per sequence against its own cache.

use std::io::{Read, Seek};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_transformers::quantized_nn::RmsNorm;

use super::config::{ModelConfig, WeightFormat};
use super::kv_cache::KvSequence;

/// A linear layer: candle's quantized matmul.
struct Linear(QMatMul);

impl Linear {
    fn new(tensor: QTensor) -> Result<Self> {
        Ok(Self(QMatMul::from_qtensor(tensor)?))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x)
    }
}

struct Layer {
    attn_norm: RmsNorm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: RmsNorm,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

/// A llama model on candle. Immutable: all per-sequence state lives in a [`KvSequence`].
pub struct CandleLlama {
    config: ModelConfig,
    /// Token embeddings, dequantized to f32 for row lookups.
    embeddings: Tensor,
    layers: Vec<Layer>,
    final_norm: RmsNorm,
    lm_head: Linear,
    /// RoPE tables `[context_length, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

/// The new tokens of one sequence in a candle forward pass.
pub struct CandleInput<'a> {
    /// The tokens of the sequence in this step.
    pub tokens: &'a [u32],
    /// The sequence's cache; `tokens[0]` goes at position `cache.len()`.
    pub cache: &'a mut dyn KvSequence,
    /// Whether logits of the last token are wanted (false for a prefill chunk that is not last).
    pub wants_logits: bool,
}

fn load_tensor<R: Read + Seek>(
    ct: &gguf_file::Content,
    reader: &mut R,
    name: &str,
    device: &Device,
) -> Result<QTensor> {
    ct.tensor(reader, name, device)
}

fn load_linear<R: Read + Seek>(
    ct: &gguf_file::Content,
    reader: &mut R,
    name: &str,
    device: &Device,
    format: WeightFormat,
) -> Result<Linear> {
    let tensor = load_tensor(ct, reader, name, device)?;
    let tensor = match format {
        WeightFormat::Q8_0 if requantizable(tensor.dtype()) => {
            QTensor::quantize(&tensor.dequantize(device)?, GgmlDType::Q8_0)?
        }
        _ => tensor,
    };
    Linear::new(tensor)
}

/// Block-quantized formats coarser than Q8_0 whose CPU kernels are slower than Q8_0's.
fn requantizable(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
    )
}

impl CandleLlama {
    /// Loads weights from a GGUF file. SmolLM2 ties its output projection to the token
    /// embedding: without `output.weight`, `token_embd.weight` is used for both.
    pub fn from_gguf<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
        let config = ModelConfig::from_gguf(ct).map_err(candle_core::Error::wrap)?;
        gpu_serves(&config, ct)?;
        let eps = config.rms_eps;
        let embeddings_q = load_tensor(ct, reader, "token_embd.weight", device)?;
        let embeddings = embeddings_q.dequantize(device)?;
        let lm_head = if ct.tensor_infos.contains_key("output.weight") {
            load_linear(ct, reader, "output.weight", device, format)?
        } else {
            Linear::new(embeddings_q)?
        };
        let final_norm =
            RmsNorm::from_qtensor(load_tensor(ct, reader, "output_norm.weight", device)?, eps)?;
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = format!("blk.{i}");
            let mut linear =
                |name: &str| load_linear(ct, reader, &format!("{p}.{name}.weight"), device, format);
            let (wq, wk, wv, wo) = (
                linear("attn_q")?,
                linear("attn_k")?,
                linear("attn_v")?,
                linear("attn_output")?,
            );
            let (w_gate, w_up, w_down) =
                (linear("ffn_gate")?, linear("ffn_up")?, linear("ffn_down")?);
            let mut norm = |name: &str| {
                RmsNorm::from_qtensor(
                    load_tensor(ct, reader, &format!("{p}.{name}.weight"), device)?,
                    eps,
                )
            };
            layers.push(Layer {
                attn_norm: norm("attn_norm")?,
                ffn_norm: norm("ffn_norm")?,
                wq,
                wk,
                wv,
                wo,
                w_gate,
                w_up,
                w_down,
            });
        }
        let (cos, sin) = rope_tables(&config, device)?;
        Ok(Self {
            config,
            embeddings,
            layers,
            final_norm,
            lm_head,
            cos,
            sin,
            device: device.clone(),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Runs one step over the new tokens of every sequence in `batch`, appending to their caches.
    /// Returns logits `[n, vocab]` for the last token of each sequence with `wants_logits`, in
    /// batch order.
    pub fn forward(&self, batch: &mut [CandleInput<'_>]) -> Result<Tensor> {
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        if ids.is_empty() {
            candle_core::bail!("forward called with no tokens");
        }
        let ids = Tensor::new(ids.as_slice(), &self.device)?;
        let mut x = self.embeddings.index_select(&ids, 0)?; // [T, hidden]
        for (layer_idx, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let q = layer.wq.forward(&h)?;
            let k = layer.wk.forward(&h)?;
            let v = layer.wv.forward(&h)?;
            let mut outputs = Vec::with_capacity(batch.len());
            let mut offset = 0;
            for seq in batch.iter_mut() {
                let n = seq.tokens.len();
                outputs.push(self.attention(
                    layer_idx,
                    &q.narrow(0, offset, n)?,
                    &k.narrow(0, offset, n)?,
                    &v.narrow(0, offset, n)?,
                    &mut *seq.cache,
                )?);
                offset += n;
            }
            let attn = Tensor::cat(&outputs, 0)?;
            x = (x + layer.wo.forward(&attn)?)?;
            let h = layer.ffn_norm.forward(&x)?;
            let gate = candle_nn::ops::silu(&layer.w_gate.forward(&h)?)?;
            let mlp = layer.w_down.forward(&(gate * layer.w_up.forward(&h)?)?)?;
            x = (x + mlp)?;
        }
        // Only the rows whose logits are wanted go through the final norm and the LM head.
        let mut last_rows = Vec::new();
        let mut end = 0u32;
        for seq in batch.iter() {
            end += seq.tokens.len() as u32;
            if seq.wants_logits {
                last_rows.push(end - 1);
            }
        }
        if last_rows.is_empty() {
            return Tensor::zeros((0, self.config.vocab_size), DType::F32, &self.device);
        }
        let rows = Tensor::new(last_rows.as_slice(), &self.device)?;
        let x = self.final_norm.forward(&x.index_select(&rows, 0)?)?;
        self.lm_head.forward(&x)
    }

    /// Causal self-attention of one sequence's new tokens against its cache.
    /// `q`: `[n, heads * head_dim]`, `k`/`v`: `[n, kv_heads * head_dim]`; returns `[n, hidden]`.
    fn attention(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut dyn KvSequence,
    ) -> Result<Tensor> {
        let c = &self.config;
        let n = q.dim(0)?;
        let start = cache.len();
        if start + n > c.context_length {
            candle_core::bail!(
                "position {} beyond the context length {}",
                start + n,
                c.context_length
            );
        }
        let cos = self.cos.narrow(0, start, n)?;
        let sin = self.sin.narrow(0, start, n)?;
        // [n, h*d] -> [1, h, n, d]: rope_i wants (batch, heads, seq, dim). GGUF llama weights
        // are permuted for interleaved (GPT-J style) rotation.
        let heads = |t: &Tensor, h: usize| -> Result<Tensor> {
            t.reshape((n, h, c.head_dim))?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)
        };
        let q = candle_nn::rotary_emb::rope_i(&heads(q, c.n_heads)?, &cos, &sin)?.squeeze(0)?;
        let k = candle_nn::rotary_emb::rope_i(&heads(k, c.n_kv_heads)?, &cos, &sin)?.squeeze(0)?;
        let v = heads(v, c.n_kv_heads)?.squeeze(0)?;
        let (k_all, v_all) = cache.append(layer, &k, &v)?; // [kv_heads, kv_len, d]
        let kv_len = k_all.dim(1)?;

        // Grouped-query attention without copying K/V: the query heads that share a KV head
        // are adjacent, so [h, n, d] reshapes to [kv_heads, group * n, d].
        let group = c.n_heads / c.n_kv_heads;
        let q = q.reshape((c.n_kv_heads, group * n, c.head_dim))?;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let mut scores = (q.matmul(&k_all.t()?)? * scale)?; // [kv_heads, group * n, kv_len]
        if n > 1 {
            let mask = causal_mask(group, n, start, kv_len, &self.device)?;
            scores = scores.broadcast_add(&mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v_all)?; // [kv_heads, group * n, d]
        out.reshape((c.n_heads, n, c.head_dim))?
            .transpose(0, 1)?
            .reshape((n, c.hidden))
    }
}

/// Additive mask `[group * n, kv_len]`: row `g * n + i` is query `i` at position `start + i`,
/// which may attend to keys `0..=start + i`.
fn causal_mask(
    group: usize,
    n: usize,
    start: usize,
    kv_len: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut mask = vec![0f32; group * n * kv_len];
    for g in 0..group {
        for i in 0..n {
            let row = (g * n + i) * kv_len;
            for j in (start + i + 1)..kv_len {
                mask[row + j] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(mask, (group * n, kv_len), device)
}

/// What this path implements: plain llama. The other architectures, and llama with RoPE
/// scaling, run on the CPU engine until the GPU path serves them (the GPU batching work);
/// refusing them here beats producing wrong text.
fn gpu_serves(c: &ModelConfig, ct: &gguf_file::Content) -> Result<()> {
    if c.architecture != crate::config::Architecture::Llama {
        candle_core::bail!(
            "architecture `{}` runs on the CPU engine only; the GPU path serves `llama`",
            c.architecture.name()
        );
    }
    if c.rope_position_scale != 1.0 || ct.tensor_infos.contains_key("rope_freqs.weight") {
        candle_core::bail!("RoPE scaling (Llama 3.1+) runs on the CPU engine only");
    }
    if c.head_dim * c.n_heads != c.hidden {
        candle_core::bail!("a head size other than hidden / heads runs on the CPU engine only");
    }
    Ok(())
}

fn rope_tables(c: &ModelConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let inv_freq: Vec<f32> = (0..c.head_dim)
        .step_by(2)
        .map(|i| 1.0 / c.rope_base.powf(i as f32 / c.head_dim as f32))
        .collect();
    let inv_freq = Tensor::new(inv_freq.as_slice(), device)?.unsqueeze(0)?;
    let positions = Tensor::arange(0u32, c.context_length as u32, device)?
        .to_dtype(DType::F32)?
        .unsqueeze(1)?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    Ok((angles.cos()?, angles.sin()?))
}

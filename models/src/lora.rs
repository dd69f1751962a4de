//! LoRA adapters in llama.cpp's GGUF format (what its `convert_lora_to_gguf.py` writes):
//! `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and for each adapted
//! projection `<base tensor>.lora_a` (`[rank, in]`) and `<base tensor>.lora_b` (`[out, rank]`).
//!
//! A projection `y = W·x` of a sequence with an adapter becomes `y = W·x + s·B·(A·x)` with
//! `s = alpha / rank` (1 when the file's alpha is 0), as llama.cpp applies it. The low-rank
//! factors are kept in f32 (an adapter is small: rank × (in + out) per projection), whatever the
//! file stores (F32, F16, BF16, Q8_0).
//!
//! An adapter file is untrusted input (a tenant's upload): its header is read within bounds
//! first (`gguf_check`), then every tensor is checked against the base model it is loaded for
//! (architecture, layer, projection, shape, one rank per file) before any weight is read; a
//! mismatch names the tensor.

use std::io::{Read, Seek};

use candle_core::quantized::gguf_file;
use candle_core::Device;
use cpu_kernels::isa::Isa;
use cpu_kernels::lowrank::{add_lowrank, add_lowrank_rows, Factors};

use crate::config::{Architecture, ModelConfig};
use crate::gguf_check::{self, GgufError};

/// Highest rank an adapter may have (S-LoRA and LoRAX serve up to 64-128; beyond that an
/// adapter is a fine-tuned model, not an adapter).
pub const MAX_RANK: usize = 256;

/// Why an adapter file cannot be used with a base model.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// Not a readable GGUF (bounds, truncation, types).
    #[error("{0}")]
    Gguf(#[from] GgufError),
    /// Reading it failed.
    #[error("reading the adapter failed: {0}")]
    Read(String),
    /// A GGUF, but not a LoRA adapter.
    #[error("not a LoRA adapter: {0}")]
    NotAnAdapter(String),
    /// Made for another architecture than the base model's.
    #[error("the adapter is for `{adapter}`, the base model is `{base}`")]
    WrongArchitecture {
        /// The adapter's `general.architecture`.
        adapter: String,
        /// The base model's.
        base: String,
    },
    /// A tensor the base model has no projection for.
    #[error("tensor `{0}` adapts nothing this base model has")]
    UnknownTensor(String),
    /// A tensor whose shape does not fit the base model's projection.
    #[error("tensor `{tensor}` has shape {found:?}, the base model needs {expected}")]
    Shape {
        /// The tensor.
        tensor: String,
        /// Its dimensions (`[rows, columns]`).
        found: Vec<usize>,
        /// What the base model's projection needs (`[rank, in]`, `[out, rank]`).
        expected: String,
    },
    /// An `A` without its `B`, or the other way round.
    #[error("tensor `{0}` has no partner (`lora_a` and `lora_b` come in pairs)")]
    Unpaired(String),
    /// No tensor at all, or a rank of 0 or above [`MAX_RANK`], or ranks that differ.
    #[error("{0}")]
    Rank(String),
}

/// Which of a layer's projections a low-rank pair adapts, and where its output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Into the stacked Q/K/V output, from this column.
    Qkv(usize),
    /// The attention's output projection.
    Output,
    /// Into the stacked gate/up output, from this column.
    GateUp(usize),
    /// The MLP's down projection.
    Down,
}

/// One projection's `B·A`, in f32.
#[derive(Debug, Clone)]
pub struct LowRank {
    /// Where it adds.
    pub target: Target,
    rank: usize,
    n_in: usize,
    n_out: usize,
    /// `[rank, n_in]`, row-major.
    a: Vec<f32>,
    /// `B` transposed, `[rank, n_out]`: its product is then `rank` row additions (see
    /// `cpu_kernels::lowrank`).
    bt: Vec<f32>,
}

impl LowRank {
    /// A pair from its factors (`a`: `[rank, n_in]`, `b`: `[n_out, rank]`, row-major).
    pub fn new(target: Target, rank: usize, n_in: usize, a: Vec<f32>, b: Vec<f32>) -> Self {
        assert_eq!(a.len(), rank * n_in, "A is [rank, in]");
        assert_eq!(b.len() % rank.max(1), 0, "B is [out, rank]");
        let n_out = b.len() / rank.max(1);
        let mut bt = vec![0f32; b.len()];
        for (o, row) in b.chunks_exact(rank.max(1)).enumerate() {
            for (k, &v) in row.iter().enumerate() {
                bt[k * n_out + o] = v;
            }
        }
        Self {
            target,
            rank,
            n_in,
            n_out,
            a,
            bt,
        }
    }

    /// Inputs it reads.
    pub fn n_in(&self) -> usize {
        self.n_in
    }

    /// Outputs it adds to.
    pub fn n_out(&self) -> usize {
        self.n_out
    }

    /// `y += scale · B·(A·x)` with `isa`'s kernels; `t` holds `rank` values of scratch.
    pub fn apply(&self, isa: Isa, x: &[f32], y: &mut [f32], scale: f32, t: &mut [f32]) {
        let (x, y) = (&x[..self.n_in], &mut y[..self.n_out]);
        add_lowrank(isa, self.factors(), scale, x, y, t);
    }

    /// [`Self::apply`] for up to `cpu_kernels::lowrank::MAX_ROWS` rows at once, `rows[r] = (x,
    /// y)` (each `x` at least `n_in` long, each `y` exactly `n_out`); `t` holds `rows · rank`.
    pub fn apply_rows(
        &self,
        isa: Isa,
        rows: &mut [(&[f32], &mut [f32])],
        scale: f32,
        t: &mut [f32],
    ) {
        for (x, _) in rows.iter_mut() {
            *x = &x[..self.n_in];
        }
        add_lowrank_rows(isa, self.factors(), scale, rows, t);
    }

    fn factors(&self) -> Factors<'_> {
        Factors {
            a: &self.a,
            bt: &self.bt,
            rank: self.rank,
        }
    }

    fn bytes(&self) -> usize {
        (self.a.len() + self.bt.len()) * 4
    }
}

/// One layer's adapted projections.
#[derive(Debug, Clone, Default)]
pub struct LayerAdapter {
    /// Its pairs, each with its target.
    pub pairs: Vec<LowRank>,
}

/// A LoRA adapter, checked against the base model it was loaded for.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    rank: usize,
    alpha: f32,
    layers: Vec<LayerAdapter>,
}

impl LoraAdapter {
    /// An adapter from its layers (one per base layer), with llama.cpp's scale `alpha / rank`.
    pub fn new(rank: usize, alpha: f32, layers: Vec<LayerAdapter>) -> Self {
        Self {
            rank,
            alpha,
            layers,
        }
    }

    /// Its rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Its `adapter.lora.alpha`.
    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    /// What multiplies `B·(A·x)`: `alpha / rank`, or 1 when alpha is 0 (llama.cpp's rule).
    pub fn scale(&self) -> f32 {
        if self.alpha == 0.0 {
            1.0
        } else {
            self.alpha / self.rank as f32
        }
    }

    /// Layer `index`'s pairs (none past its layers).
    pub fn layer(&self, index: usize) -> Option<&LayerAdapter> {
        self.layers.get(index)
    }

    /// Bytes its factors take in memory.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| &l.pairs)
            .map(LowRank::bytes)
            .sum()
    }

    /// Reads and checks the adapter in `reader` against `base`.
    pub fn read<R: Read + Seek>(reader: &mut R, base: &ModelConfig) -> Result<Self, AdapterError> {
        gguf_check::check(reader)?;
        reader
            .seek(std::io::SeekFrom::Start(0))
            .map_err(|e| AdapterError::Read(e.to_string()))?;
        let content =
            gguf_file::Content::read(reader).map_err(|e| AdapterError::Read(e.to_string()))?;
        let text = |key: &str| match content.metadata.get(key) {
            Some(gguf_file::Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        if text("general.type").as_deref() != Some("adapter") {
            return Err(AdapterError::NotAnAdapter(
                "`general.type` is not `adapter`".into(),
            ));
        }
        if text("adapter.type").as_deref() != Some("lora") {
            return Err(AdapterError::NotAnAdapter(
                "`adapter.type` is not `lora`".into(),
            ));
        }
        let architecture = text("general.architecture").unwrap_or_default();
        if Architecture::from_name(&architecture) != Some(base.architecture) {
            return Err(AdapterError::WrongArchitecture {
                adapter: architecture,
                base: base.architecture.name().to_string(),
            });
        }
        let alpha = match content.metadata.get("adapter.lora.alpha") {
            Some(value) => value.to_f32().map_err(|_| {
                AdapterError::NotAnAdapter("`adapter.lora.alpha` is not a number".into())
            })?,
            None => 0.0,
        };
        if !alpha.is_finite() {
            return Err(AdapterError::NotAnAdapter(
                "`adapter.lora.alpha` is not finite".into(),
            ));
        }
        // Every tensor checked before any is read.
        let mut planned: Vec<(usize, String, Target, usize, usize)> = Vec::new();
        let mut rank = None;
        for (name, info) in &content.tensor_infos {
            let Some(stem) = name.strip_suffix(".lora_a") else {
                if !name.ends_with(".lora_b") {
                    return Err(AdapterError::UnknownTensor(name.clone()));
                }
                let partner = format!("{}.lora_a", name.trim_end_matches(".lora_b"));
                if !content.tensor_infos.contains_key(&partner) {
                    return Err(AdapterError::Unpaired(name.clone()));
                }
                continue;
            };
            let b_name = format!("{stem}.lora_b");
            let b_info = content
                .tensor_infos
                .get(&b_name)
                .ok_or_else(|| AdapterError::Unpaired(name.clone()))?;
            let (layer, target, n_out, n_in) =
                projection(base, stem).ok_or_else(|| AdapterError::UnknownTensor(name.clone()))?;
            let a_dims = info.shape.dims().to_vec();
            let r = match a_dims.as_slice() {
                [r, k] if *k == n_in && *r > 0 => *r,
                _ => {
                    return Err(AdapterError::Shape {
                        tensor: name.clone(),
                        found: a_dims,
                        expected: match rank {
                            Some(rank) => format!("[{rank}, {n_in}]"),
                            None => format!("[rank, {n_in}]"),
                        },
                    })
                }
            };
            if r > MAX_RANK {
                return Err(AdapterError::Rank(format!(
                    "tensor `{name}` has rank {r}; at most {MAX_RANK} is served"
                )));
            }
            if *rank.get_or_insert(r) != r {
                return Err(AdapterError::Rank(format!(
                    "tensor `{name}` has rank {r}, the adapter's other tensors {}",
                    rank.unwrap_or(0)
                )));
            }
            let b_dims = b_info.shape.dims().to_vec();
            if b_dims != [n_out, r] {
                return Err(AdapterError::Shape {
                    tensor: b_name,
                    found: b_dims,
                    expected: format!("[{n_out}, {r}]"),
                });
            }
            planned.push((layer, stem.to_string(), target, n_in, r));
        }
        let rank = rank.ok_or_else(|| AdapterError::Rank("the adapter has no tensors".into()))?;
        let mut layers = vec![LayerAdapter::default(); base.n_layers];
        for (layer, stem, target, n_in, r) in planned {
            let a = read_f32(&content, reader, &format!("{stem}.lora_a"))?;
            let b = read_f32(&content, reader, &format!("{stem}.lora_b"))?;
            layers[layer]
                .pairs
                .push(LowRank::new(target, r, n_in, a, b));
        }
        Ok(Self::new(rank, alpha, layers))
    }
}

/// `(layer, target, out, in)` of the base projection `stem` names (`blk.3.attn_q.weight`).
fn projection(base: &ModelConfig, stem: &str) -> Option<(usize, Target, usize, usize)> {
    let rest = stem.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    if layer >= base.n_layers {
        return None;
    }
    let (h, q, kv, f) = (base.hidden, base.q_dim(), base.kv_dim(), base.ffn);
    let fused = base.architecture == Architecture::Phi3;
    let (target, n_out, n_in) = match (name, fused) {
        ("attn_q", false) => (Target::Qkv(0), q, h),
        ("attn_k", false) => (Target::Qkv(q), kv, h),
        ("attn_v", false) => (Target::Qkv(q + kv), kv, h),
        ("attn_qkv", true) => (Target::Qkv(0), q + 2 * kv, h),
        ("attn_output", _) => (Target::Output, h, q),
        ("ffn_gate", false) => (Target::GateUp(0), f, h),
        ("ffn_up", false) => (Target::GateUp(f), f, h),
        // Phi-3 stores gate and up stacked in `ffn_up`, as the engine reads them.
        ("ffn_up", true) => (Target::GateUp(0), 2 * f, h),
        ("ffn_down", _) => (Target::Down, h, f),
        _ => return None,
    };
    Some((layer, target, n_out, n_in))
}

fn read_f32<R: Read + Seek>(
    content: &gguf_file::Content,
    reader: &mut R,
    name: &str,
) -> Result<Vec<f32>, AdapterError> {
    content
        .tensor(reader, name, &Device::Cpu)
        .and_then(|t| t.dequantize(&Device::Cpu))
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .map_err(|e| AdapterError::Read(format!("tensor `{name}`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_adds_scaled_b_times_a_x() {
        // A = [[1, 0], [0, 2]], B = [[1, 1], [0, 3], [1, 0]], x = [1, 1], scale 0.5:
        // A·x = [1, 2]; B·(A·x) = [3, 6, 1]; halved: [1.5, 3, 0.5].
        let pair = LowRank::new(
            Target::Down,
            2,
            2,
            vec![1.0, 0.0, 0.0, 2.0],
            vec![1.0, 1.0, 0.0, 3.0, 1.0, 0.0],
        );
        for isa in Isa::all_supported() {
            let mut y = vec![10.0, 20.0, 30.0];
            pair.apply(isa, &[1.0, 1.0], &mut y, 0.5, &mut [0.0; 2]);
            assert_eq!(y, [11.5, 23.0, 30.5], "{isa:?}");
        }
    }

    #[test]
    fn the_scale_is_alpha_over_rank_or_one() {
        assert_eq!(LoraAdapter::new(16, 8.0, vec![]).scale(), 0.5);
        assert_eq!(LoraAdapter::new(16, 0.0, vec![]).scale(), 1.0);
    }
}

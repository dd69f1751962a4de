//! The forward pass of every supported architecture on the CPU kernels: one step over the flattened new tokens of every
//! sequence in the batch, reading and writing the paged KV cache in place.
//!
//! Per layer: RMSNorm fused with int8 quantization; Q, K and V as one stacked product (plus
//! biases, Qwen 2; each head RMS-normed, Qwen 3); RoPE (adjacent pairs or halves, by
//! architecture) in place and the new keys and values written to their slots in f16; attention per
//! (sequence, KV head, run of queries); the output projection added into the residual stream;
//! RMSNorm and quantization again; gate and up as one stacked product; SiLU(gate) * up fused
//! with the quantization the down projection reads; the down projection added into the
//! residual. Every buffer comes from [`Scratch`], sized for the largest step seen and reused.

//!
//! `load` reads and repacks the weights, `step` holds the stages of a step, `error` what can go
//! wrong.

use crate::config::{BlockTable, ModelConfig};
use cpu_kernels::attention::Heads;
use cpu_kernels::isa::Isa;
use cpu_kernels::kv::{KvLayout, KvPool};
use cpu_kernels::matmul::{self, PackedMatrix};
use cpu_kernels::parallel;
use cpu_kernels::quant::QuantizedRows;

mod adapters;
mod error;
mod load;
mod step;

use adapters::StepAdapters;

use step::{rows_wanting_logits, sequence_rows};

pub use error::Error;

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked: `[q_dim + 2 * kv_dim, hidden]`.
    qkv: Fused,
    /// Their biases, stacked the same way (Qwen 2).
    qkv_bias: Option<Vec<f32>>,
    /// RMSNorm weights of each query head and each key head before RoPE (Qwen 3, Gemma 3).
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// RMSNorm weights applied to the attention's and the MLP's outputs before each joins the
    /// residual stream (Gemma 3).
    post_norms: Option<(Vec<f32>, Vec<f32>)>,
    wo: PackedMatrix,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked: `[2 * ffn, hidden]`.
    gate_up: Fused,
    down: PackedMatrix,
}

/// Projections that read the same input and write side by side (Q, K, V; gate, up): one
/// stacked matrix where their types allow, else each on its own (K-quant files mix types, e.g.
/// Q4_K queries beside Q6_K values), written into adjacent columns of one output.
struct Fused {
    parts: Vec<PackedMatrix>,
}

impl Fused {
    fn new(parts: Vec<PackedMatrix>) -> Self {
        let refs: Vec<&PackedMatrix> = parts.iter().collect();
        match PackedMatrix::stack(&refs) {
            Some(stacked) => Self {
                parts: vec![stacked],
            },
            None => Self { parts },
        }
    }

    /// Outputs of all parts together.
    fn n(&self) -> usize {
        self.parts.iter().map(PackedMatrix::n).sum()
    }

    /// Inputs (every part has the same).
    fn k(&self) -> usize {
        self.parts.first().map_or(0, PackedMatrix::k)
    }

    /// Every part's product, side by side in `out` (`ldo` columns per row).
    fn matmul(&self, isa: Isa, x: &QuantizedRows, out: &mut [f32], ldo: usize) {
        let mut col = 0;
        for part in &self.parts {
            matmul::matmul(isa, part, x, out, ldo, col, matmul::Output::Store);
            col += part.n();
        }
    }
}

/// A model of one of the supported architectures in the CPU kernels' layout.
pub struct CpuLlama {
    config: ModelConfig,
    isa: Isa,
    /// Token embeddings; also the output projection when the model ties them.
    embeddings: PackedMatrix,
    lm_head: Option<PackedMatrix>,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    /// RoPE's angle per position for each pair: `scale * base^(-2i / head_dim) / factor_i`.
    /// The step computes its rows' cosines and sines from them (a few hundred per token), so
    /// no table grows with the context length a file claims.
    inv_freq: Vec<f32>,
    /// The sliding-window layers' frequencies (their own base, no scaling), if any.
    inv_freq_sliding: Option<Vec<f32>>,
}

/// One sequence's new tokens in a step.
pub struct StepSequence<'a> {
    /// The new tokens; the first goes at position `table.len`.
    pub tokens: &'a [u32],
    /// Its blocks; must hold every position after this step.
    pub table: &'a mut BlockTable,
    /// Whether the logits of its last token are wanted.
    pub wants_logits: bool,
    /// The LoRA adapter its projections add, if any (checked against this model).
    pub adapter: Option<&'a crate::lora::LoraAdapter>,
}

/// How far a step came: done with its logits, or paused before a layer.
#[derive(Debug, PartialEq)]
pub enum Progress {
    /// The logits `[sequences wanting them, vocab]`, row-major, in batch order.
    Done(Vec<f32>),
    /// Stopped between layers; goes on from this layer.
    PausedBefore(usize),
}

/// Buffers of a step, grown to the largest step seen and then reused.
pub struct Scratch {
    x: Vec<f32>,
    xq: QuantizedRows,
    qkv: Vec<f32>,
    /// The attention's output quantized for the output projection (`q_dim` wide).
    aq: QuantizedRows,
    attn: Vec<f32>,
    gate_up: Vec<f32>,
    hq: QuantizedRows,
    /// Per thread: attention scores.
    scores: Vec<Vec<f32>>,
    /// Per token row: (sequence index, position).
    rows: Vec<(usize, usize)>,
    /// Per token row: RoPE cosines and sines of its position, `head_dim / 2` each; and for
    /// sliding-window layers, where they have their own.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    rope_cos_sliding: Vec<f32>,
    rope_sin_sliding: Vec<f32>,
    /// A projection's output before its post-norm joins the residual stream (Gemma 3).
    post: Vec<f32>,
    /// The normed input of Q/K/V and of gate/up in f32, for adapters' `A·x` (steps with
    /// adapters only).
    normed: Vec<f32>,
    /// Attention work items: (sequence index, KV head, first query, end query).
    items: Vec<(usize, usize, usize, usize)>,
}

impl CpuLlama {
    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Bytes the weights take in memory (matrices in the kernels' layouts, norms and biases).
    pub fn weight_bytes(&self) -> usize {
        let vector = |v: &[f32]| v.len() * 4;
        let fused = |f: &Fused| f.parts.iter().map(PackedMatrix::bytes).sum::<usize>();
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                fused(&l.qkv)
                    + l.wo.bytes()
                    + fused(&l.gate_up)
                    + l.down.bytes()
                    + vector(&l.attn_norm)
                    + vector(&l.ffn_norm)
                    + l.qkv_bias.as_deref().map_or(0, vector)
                    + l.qk_norm.as_ref().map_or(0, |(q, k)| vector(q) + vector(k))
                    + l.post_norms
                        .as_ref()
                        .map_or(0, |(a, m)| vector(a) + vector(m))
            })
            .sum();
        self.embeddings.bytes()
            + self.lm_head.as_ref().map_or(0, PackedMatrix::bytes)
            + layers
            + vector(&self.final_norm)
    }

    /// The kernel family in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The attention geometry of layer `layer` (its window, if it slides).
    fn heads(&self, layer: usize) -> Heads {
        let c = &self.config;
        Heads {
            n_heads: c.n_heads,
            kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            scale: c.attention_scale,
            window: c
                .sliding_window
                .as_ref()
                .filter(|_| c.is_sliding(layer))
                .map(|w| w.window),
        }
    }

    /// A KV pool of `num_blocks` blocks of `block_size` positions.
    pub fn new_kv_pool(&self, num_blocks: usize, block_size: usize) -> KvPool {
        let c = &self.config;
        KvPool::new(KvLayout {
            layers: c.n_layers,
            kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            block_size,
            num_blocks,
        })
    }

    /// Empty step buffers. An input keeps the super-block form only where a matrix that
    /// reads it wants it (Q4_K, Q6_K): other files pay nothing for it.
    pub fn new_scratch(&self) -> Scratch {
        let wants = |pick: fn(&Layer) -> Vec<&PackedMatrix>| {
            self.layers
                .iter()
                .flat_map(pick)
                .any(PackedMatrix::reads_super_blocks)
        };
        let head = self.lm_head.as_ref().unwrap_or(&self.embeddings);
        let hidden_wants = wants(|l| l.qkv.parts.iter().chain(&l.gate_up.parts).collect())
            || head.reads_super_blocks();
        Scratch {
            x: Vec::new(),
            xq: QuantizedRows::with_forms(self.config.hidden, hidden_wants),
            qkv: Vec::new(),
            aq: QuantizedRows::with_forms(self.config.q_dim(), wants(|l| vec![&l.wo])),
            attn: Vec::new(),
            gate_up: Vec::new(),
            hq: QuantizedRows::with_forms(self.config.ffn, wants(|l| vec![&l.down])),
            scores: (0..parallel::threads()).map(|_| Vec::new()).collect(),
            rows: Vec::new(),
            rope_cos: Vec::new(),
            rope_sin: Vec::new(),
            rope_cos_sliding: Vec::new(),
            rope_sin_sliding: Vec::new(),
            post: Vec::new(),
            normed: Vec::new(),
            items: Vec::new(),
        }
    }

    /// Runs one step; returns the logits `[sequences wanting them, vocab]`, row-major, in batch
    /// order. Advances each table's length by its tokens.
    pub fn forward(
        &self,
        kv: &mut KvPool,
        scratch: &mut Scratch,
        batch: &mut [StepSequence<'_>],
    ) -> Result<Vec<f32>, Error> {
        match self.forward_from(kv, scratch, batch, 0, &|| false)? {
            Progress::Done(logits) => Ok(logits),
            Progress::PausedBefore(_) => unreachable!("never asked to pause"),
        }
    }

    /// Runs the step's layers from `first_layer` on (0: the step starts, its rows are laid out
    /// and embedded); after each layer but the last, stops when `pause()` says so. A paused step
    /// keeps its state in `scratch` and in the blocks of `batch`: other sequences' steps may
    /// run (another scratch, other blocks) before it goes on from the layer it names, with the
    /// same `scratch` and `batch`.
    pub fn forward_from(
        &self,
        kv: &mut KvPool,
        scratch: &mut Scratch,
        batch: &mut [StepSequence<'_>],
        first_layer: usize,
        pause: &dyn Fn() -> bool,
    ) -> Result<Progress, Error> {
        if first_layer == 0 {
            let max_len = self.lay_out_rows(kv.layout(), scratch, batch)?;
            self.size_scratch(scratch, max_len);
            self.rope_angles(scratch);
            self.plan_attention(scratch, batch);
            self.embed(scratch, batch);
        }
        let row_grain = parallel::grain_for(scratch.rows.len(), 2).max(4);
        let adapters = StepAdapters::new(self.isa, batch.iter().map(|s| s.adapter));
        for (index, layer) in self.layers.iter().enumerate().skip(first_layer) {
            {
                // Each sequence's rows and blocks (the layer only reads them).
                let seqs = sequence_rows(batch);
                self.attention_block(index, layer, kv, scratch, &seqs, &adapters, row_grain);
            }
            self.mlp_block(index, layer, scratch, &adapters, row_grain);
            if index + 1 < self.layers.len() && pause() {
                return Ok(Progress::PausedBefore(index + 1));
            }
        }
        let wanted = rows_wanting_logits(batch);
        for seq in batch.iter_mut() {
            seq.table.len += seq.tokens.len();
        }
        Ok(Progress::Done(self.logits(scratch, &wanted)))
    }
}

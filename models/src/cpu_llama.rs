//! The llama forward pass on the CPU kernels: one step over the flattened new tokens of every
//! sequence in the batch, reading and writing the paged KV cache in place.
//!
//! Per layer: RMSNorm fused with int8 quantization; Q, K and V as one stacked product; RoPE
//! in place and the new keys and values written to their slots in f16; attention per
//! (sequence, KV head, run of queries); the output projection added into the residual stream;
//! RMSNorm and quantization again; gate and up as one stacked product; SiLU(gate) * up fused
//! with the quantization the down projection reads; the down projection added into the
//! residual. Every buffer comes from [`Scratch`], sized for the largest step seen and reused.

use std::io::{Read, Seek};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

use crate::config::{BlockTable, LlamaConfig, WeightFormat};
use cpu_kernels::attention::{self, Heads, SequenceRows};
use cpu_kernels::isa::Isa;
use cpu_kernels::kv::{KvLayout, KvPool};
use cpu_kernels::math;
use cpu_kernels::matmul::{matmul, Output, PackedMatrix, ShapeError};
use cpu_kernels::parallel::{self, SharedMut};
use cpu_kernels::quant::{self, QuantizedRows, BLOCK};

/// Errors of the CPU path: bad weights at load, or a batch the caches cannot hold.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor could not be read from the file.
    #[error("{tensor}: {source}")]
    Read {
        /// The tensor's name.
        tensor: String,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },
    /// A tensor's shape does not fit the kernels.
    #[error("{tensor}: {source}")]
    Shape {
        /// The tensor's name.
        tensor: String,
        /// Why.
        #[source]
        source: ShapeError,
    },
    /// A weight that must be a matrix is not.
    #[error("{tensor}: expected a matrix, found shape {dims:?}")]
    NotAMatrix {
        /// The tensor's name.
        tensor: String,
        /// Its shape.
        dims: Vec<usize>,
    },
    /// Projections that are run as one product do not match.
    #[error("{layer}: projections of different types or shapes cannot be stacked")]
    Unstackable {
        /// The layer.
        layer: String,
    },
    /// The model's shape is not one the kernels support.
    #[error("unsupported shape: hidden {hidden} (a multiple of {BLOCK} is needed), head size {head_dim}, {n_heads} heads over {n_kv_heads} KV heads")]
    UnsupportedShape {
        /// Hidden size.
        hidden: usize,
        /// Head size.
        head_dim: usize,
        /// Query heads.
        n_heads: usize,
        /// Key/value heads.
        n_kv_heads: usize,
    },
    /// A sequence would pass the context length.
    #[error("position {end} beyond the context length {context_length}")]
    BeyondContext {
        /// The position it would reach.
        end: usize,
        /// The model's context length.
        context_length: usize,
    },
    /// A sequence's blocks cannot hold its new tokens.
    #[error("sequence needs {needed} positions but holds blocks for {held}")]
    BlocksShort {
        /// Positions after the step.
        needed: usize,
        /// Positions its blocks hold.
        held: usize,
    },
    /// A block id past the pool.
    #[error("block {0} is not in the pool")]
    BlockOutsidePool(u32),
    /// A token id past the vocabulary.
    #[error("token id {0} is outside the vocabulary")]
    TokenOutsideVocabulary(u32),
    /// A step with nothing to run.
    #[error("forward called with no tokens")]
    EmptyStep,
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked: `[q_dim + 2 * kv_dim, hidden]`.
    qkv: PackedMatrix,
    wo: PackedMatrix,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked: `[2 * ffn, hidden]`.
    gate_up: PackedMatrix,
    down: PackedMatrix,
}

/// A llama model in the CPU kernels' layout.
pub struct CpuLlama {
    config: LlamaConfig,
    isa: Isa,
    ffn: usize,
    /// Token embeddings; also the output projection when the model ties them.
    embeddings: PackedMatrix,
    lm_head: Option<PackedMatrix>,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    /// RoPE `[context_length, head_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// One sequence's new tokens in a step.
pub struct StepSequence<'a> {
    /// The new tokens; the first goes at position `table.len`.
    pub tokens: &'a [u32],
    /// Its blocks; must hold every position after this step.
    pub table: &'a mut BlockTable,
    /// Whether the logits of its last token are wanted.
    pub wants_logits: bool,
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
    attn: Vec<f32>,
    gate_up: Vec<f32>,
    hq: QuantizedRows,
    /// Per thread: attention scores.
    scores: Vec<Vec<f32>>,
    /// Per token row: (sequence index, position).
    rows: Vec<(usize, usize)>,
    /// Attention work items: (sequence index, KV head, first query, end query).
    items: Vec<(usize, usize, usize, usize)>,
}

fn load_qtensor<R: Read + Seek>(
    ct: &gguf_file::Content,
    reader: &mut R,
    name: &str,
) -> Result<QTensor, Error> {
    ct.tensor(reader, name, &Device::Cpu)
        .map_err(|e| read_error(name, e))
}

fn load_vector<R: Read + Seek>(
    ct: &gguf_file::Content,
    reader: &mut R,
    name: &str,
) -> Result<Vec<f32>, Error> {
    load_qtensor(ct, reader, name)?
        .dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .map_err(|e| read_error(name, e))
}

fn read_error(tensor: &str, source: candle_core::Error) -> Error {
    Error::Read {
        tensor: tensor.to_string(),
        source,
    }
}

/// A weight matrix in the kernels' layout: 4-bit and 8-bit blocks as stored (unless `format`
/// asks for Q8_0), any other type re-quantized to Q8_0.
fn load_matrix<R: Read + Seek>(
    ct: &gguf_file::Content,
    reader: &mut R,
    name: &str,
    format: WeightFormat,
) -> Result<PackedMatrix, Error> {
    let tensor = load_qtensor(ct, reader, name)?;
    let (n, k) = match tensor.shape().dims() {
        [n, k] => (*n, *k),
        dims => {
            return Err(Error::NotAMatrix {
                tensor: name.to_string(),
                dims: dims.to_vec(),
            })
        }
    };
    let bytes = || tensor.data().map_err(|e| read_error(name, e));
    let keep = format == WeightFormat::AsStored;
    let matrix = match tensor.dtype() {
        GgmlDType::Q4_0 if keep => PackedMatrix::from_q4_0(&bytes()?, n, k),
        GgmlDType::Q4_1 if keep => PackedMatrix::from_q4_1(&bytes()?, n, k),
        GgmlDType::Q8_0 => PackedMatrix::from_q8_0(&bytes()?, n, k),
        _ => {
            let values = tensor
                .dequantize(&Device::Cpu)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .map_err(|e| read_error(name, e))?;
            PackedMatrix::quantize_q8_0(&values, n, k)
        }
    };
    matrix.map_err(|source| Error::Shape {
        tensor: name.to_string(),
        source,
    })
}

fn stack(name: &str, parts: &[&PackedMatrix]) -> Result<PackedMatrix, Error> {
    PackedMatrix::stack(parts).ok_or_else(|| Error::Unstackable {
        layer: name.to_string(),
    })
}

impl CpuLlama {
    /// Loads and repacks the weights of a llama GGUF.
    pub fn from_gguf<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        config: LlamaConfig,
        format: WeightFormat,
    ) -> Result<Self, Error> {
        let c = &config;
        if !c.hidden.is_multiple_of(BLOCK)
            || !c.head_dim.is_multiple_of(2)
            || !c.n_heads.is_multiple_of(c.n_kv_heads)
        {
            return Err(Error::UnsupportedShape {
                hidden: c.hidden,
                head_dim: c.head_dim,
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
            });
        }
        let embeddings = load_matrix(ct, reader, "token_embd.weight", format)?;
        let lm_head = match ct.tensor_infos.contains_key("output.weight") {
            true => Some(load_matrix(ct, reader, "output.weight", format)?),
            false => None,
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        let mut ffn = 0;
        for i in 0..c.n_layers {
            let p = format!("blk.{i}");
            let mut matrix =
                |name: &str| load_matrix(ct, reader, &format!("{p}.{name}.weight"), format);
            let (wq, wk, wv, wo) = (
                matrix("attn_q")?,
                matrix("attn_k")?,
                matrix("attn_v")?,
                matrix("attn_output")?,
            );
            let (gate, up, down) = (matrix("ffn_gate")?, matrix("ffn_up")?, matrix("ffn_down")?);
            // Every packed matrix has whole blocks of inputs (checked at repacking), so the MLP
            // size the down projection reads is a multiple of BLOCK too.
            ffn = gate.n();
            layers.push(Layer {
                attn_norm: load_vector(ct, reader, &format!("{p}.attn_norm.weight"))?,
                ffn_norm: load_vector(ct, reader, &format!("{p}.ffn_norm.weight"))?,
                qkv: stack(&p, &[&wq, &wk, &wv])?,
                wo,
                gate_up: stack(&p, &[&gate, &up])?,
                down,
            });
        }
        let final_norm = load_vector(ct, reader, "output_norm.weight")?;
        let (cos, sin) = rope_tables(c);
        Ok(Self {
            isa: Isa::detect(),
            ffn,
            embeddings,
            lm_head,
            layers,
            final_norm,
            cos,
            sin,
            config,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The kernel family in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    fn heads(&self) -> Heads {
        Heads {
            n_heads: self.config.n_heads,
            kv_heads: self.config.n_kv_heads,
            head_dim: self.config.head_dim,
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

    /// Empty step buffers.
    pub fn new_scratch(&self) -> Scratch {
        Scratch {
            x: Vec::new(),
            xq: QuantizedRows::new(self.config.hidden),
            qkv: Vec::new(),
            attn: Vec::new(),
            gate_up: Vec::new(),
            hq: QuantizedRows::new(self.ffn),
            scores: (0..parallel::threads()).map(|_| Vec::new()).collect(),
            rows: Vec::new(),
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
            self.plan_attention(scratch, batch);
            self.embed(scratch, batch);
        }
        let row_grain = parallel::grain_for(scratch.rows.len(), 2).max(4);
        for (index, layer) in self.layers.iter().enumerate().skip(first_layer) {
            {
                // Each sequence's rows and blocks (the layer only reads them).
                let seqs = sequence_rows(batch);
                self.attention_block(index, layer, kv, scratch, &seqs, row_grain);
            }
            self.mlp_block(layer, scratch, row_grain);
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

    /// Checks the batch against the model and the pool, and lays out one row per new token
    /// (`scratch.rows`); returns the longest sequence after the step.
    fn lay_out_rows(
        &self,
        layout: KvLayout,
        scratch: &mut Scratch,
        batch: &[StepSequence<'_>],
    ) -> Result<usize, Error> {
        let c = &self.config;
        let bs = layout.block_size;
        scratch.rows.clear();
        let mut max_len = 0;
        for (s, seq) in batch.iter().enumerate() {
            let start = seq.table.len;
            let end = start + seq.tokens.len();
            if end > c.context_length {
                return Err(Error::BeyondContext {
                    end,
                    context_length: c.context_length,
                });
            }
            let held = seq.table.blocks.len() * bs;
            if end > held {
                return Err(Error::BlocksShort { needed: end, held });
            }
            let outside = seq
                .table
                .blocks
                .iter()
                .find(|&&b| b as usize >= layout.num_blocks);
            if let Some(&bad) = outside {
                return Err(Error::BlockOutsidePool(bad));
            }
            if let Some(&bad) = seq.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(Error::TokenOutsideVocabulary(bad));
            }
            max_len = max_len.max(end);
            scratch.rows.extend((start..end).map(|p| (s, p)));
        }
        if scratch.rows.is_empty() {
            return Err(Error::EmptyStep);
        }
        Ok(max_len)
    }

    /// Grows the step's buffers to its rows (they are kept for later steps).
    fn size_scratch(&self, scratch: &mut Scratch, max_len: usize) {
        let c = &self.config;
        let t = scratch.rows.len();
        let qkv_dim = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim;
        grow(&mut scratch.x, t * c.hidden);
        grow(&mut scratch.qkv, t * qkv_dim);
        grow(&mut scratch.attn, t * c.hidden);
        grow(&mut scratch.gate_up, t * 2 * self.ffn);
        scratch.xq.reset(t);
        scratch.hq.reset(t);
        let group_rows = self.heads().group().min(attention::MAX_GROUP);
        for s in &mut scratch.scores {
            grow(s, group_rows * max_len);
        }
    }

    /// Attention work items: (sequence, KV head, run of queries). Long prefills are cut into
    /// runs so that both threads get work even for one sequence.
    fn plan_attention(&self, scratch: &mut Scratch, batch: &[StepSequence<'_>]) {
        scratch.items.clear();
        for (s, seq) in batch.iter().enumerate() {
            let n = seq.tokens.len();
            let run = if n > 1 { 8 } else { 1 };
            for h in 0..self.config.n_kv_heads {
                let mut q = 0;
                while q < n {
                    scratch.items.push((s, h, q, (q + run).min(n)));
                    q += run;
                }
            }
        }
    }

    /// The new tokens' embeddings into the residual stream.
    fn embed(&self, scratch: &mut Scratch, batch: &[StepSequence<'_>]) {
        let hidden = self.config.hidden;
        let tokens = batch.iter().flat_map(|seq| seq.tokens.iter());
        for (x, &token) in scratch.x.chunks_exact_mut(hidden).zip(tokens) {
            self.embeddings.dequantize_row(token as usize, x);
        }
    }

    /// A layer's attention half: norm, Q/K/V, RoPE and the new keys and values into the pool,
    /// attention, and the output projection added into the residual stream.
    fn attention_block(
        &self,
        index: usize,
        layer: &Layer,
        kv: &mut KvPool,
        scratch: &mut Scratch,
        seqs: &[SequenceRows<'_>],
        row_grain: usize,
    ) {
        let (isa, hidden) = (self.isa, self.config.hidden);
        let eps = self.config.rms_eps as f32;
        let xq = &mut scratch.xq;
        norm_quantize(
            isa,
            &scratch.x,
            hidden,
            &layer.attn_norm,
            eps,
            xq,
            row_grain,
        );
        let qkv_dim = layer.qkv.n();
        matmul(
            isa,
            &layer.qkv,
            xq,
            &mut scratch.qkv,
            qkv_dim,
            0,
            Output::Store,
        );
        self.rope_and_store(index, kv, scratch, seqs, row_grain);
        self.attend(index, kv, scratch, seqs);
        quantize_rows(isa, &scratch.attn, hidden, &mut scratch.xq, row_grain);
        let x = &mut scratch.x;
        matmul(
            isa,
            &layer.wo,
            &scratch.xq,
            x,
            hidden,
            0,
            Output::Accumulate,
        );
    }

    /// RoPE on each row's queries and keys, in place, and its key and value written to its
    /// slot of the pool in f16.
    fn rope_and_store(
        &self,
        layer: usize,
        kv: &mut KvPool,
        scratch: &mut Scratch,
        seqs: &[SequenceRows<'_>],
        row_grain: usize,
    ) {
        let c = &self.config;
        let hd = c.head_dim;
        let (q_dim, kv_dim) = (c.n_heads * hd, c.n_kv_heads * hd);
        let qkv_dim = q_dim + 2 * kv_dim;
        let t = scratch.rows.len();
        let layout = kv.layout();
        let bs = layout.block_size;
        let qkv = SharedMut::new(&mut scratch.qkv[..t * qkv_dim]);
        let (keys, values) = kv.data_mut();
        let (keys, values) = (SharedMut::new(keys), SharedMut::new(values));
        let rows = &scratch.rows;
        parallel::for_each_chunk(t, row_grain, |_, range| {
            for r in range {
                let (s, pos) = rows[r];
                // SAFETY: row `r` of `qkv` belongs to this work item alone.
                let row = unsafe { qkv.slice(r * qkv_dim..(r + 1) * qkv_dim) };
                let angles = pos * hd / 2..(pos + 1) * hd / 2;
                let (cos, sin) = (&self.cos[angles.clone()], &self.sin[angles]);
                for head in row[..q_dim + kv_dim].chunks_exact_mut(hd) {
                    math::rope(head, cos, sin);
                }
                let block = seqs[s].blocks[pos / bs] as usize;
                for h in 0..c.n_kv_heads {
                    let at = layout.slab(layer, block, h) + (pos % bs) * hd;
                    let k = &row[q_dim + h * hd..q_dim + (h + 1) * hd];
                    let v = &row[q_dim + kv_dim + h * hd..q_dim + kv_dim + (h + 1) * hd];
                    // SAFETY: each position has one slot, written by its row alone.
                    unsafe {
                        math::to_f16(k, keys.slice(at..at + hd));
                        math::to_f16(v, values.slice(at..at + hd));
                    }
                }
            }
        });
    }

    /// Attention, one work item per (sequence, KV head, run of queries), reading the pool in
    /// place; the heads' outputs into `scratch.attn`.
    fn attend(&self, layer: usize, kv: &KvPool, scratch: &mut Scratch, seqs: &[SequenceRows<'_>]) {
        let (hidden, t) = (self.config.hidden, scratch.rows.len());
        let qkv_dim = (self.config.n_heads + 2 * self.config.n_kv_heads) * self.config.head_dim;
        let heads = self.heads();
        let out = SharedMut::new(&mut scratch.attn[..t * hidden]);
        let qkv = &scratch.qkv[..t * qkv_dim];
        let items = &scratch.items;
        let scores = SharedMut::new(&mut scratch.scores);
        let isa = self.isa;
        parallel::for_each_chunk(items.len(), 1, |thread, range| {
            // SAFETY: each thread uses its own scores buffer.
            let scores = unsafe { &mut scores.slice(thread..thread + 1)[0] };
            for &(s, h, q0, q1) in &items[range] {
                // SAFETY: the item's heads and rows are written by it alone.
                unsafe {
                    attention::attend(
                        isa,
                        kv,
                        layer,
                        heads,
                        seqs[s],
                        h,
                        q0..q1,
                        qkv,
                        qkv_dim,
                        out,
                        hidden,
                        scores,
                    )
                };
            }
        });
    }

    /// A layer's MLP half: norm, gate and up as one product, SiLU(gate) * up quantized for the
    /// down projection, added into the residual stream.
    fn mlp_block(&self, layer: &Layer, scratch: &mut Scratch, row_grain: usize) {
        let (isa, hidden, ffn) = (self.isa, self.config.hidden, self.ffn);
        let eps = self.config.rms_eps as f32;
        let t = scratch.rows.len();
        let xq = &mut scratch.xq;
        norm_quantize(isa, &scratch.x, hidden, &layer.ffn_norm, eps, xq, row_grain);
        let gate_up = &mut scratch.gate_up;
        matmul(isa, &layer.gate_up, xq, gate_up, 2 * ffn, 0, Output::Store);
        {
            let gate_up = SharedMut::new(&mut scratch.gate_up[..t * 2 * ffn]);
            let writer = scratch.hq.writer();
            parallel::for_each_chunk(t, row_grain, |_, range| {
                for r in range {
                    // SAFETY: rows are disjoint between work items.
                    unsafe {
                        let row = gate_up.slice(r * 2 * ffn..(r + 1) * 2 * ffn);
                        let (gate, up) = row.split_at_mut(ffn);
                        math::silu_mul(isa, gate, up);
                        let (q, d, s) = writer.blocks(r, 0..ffn / BLOCK);
                        quant::quantize(isa, gate, q, d, s);
                    }
                }
            });
        }
        let x = &mut scratch.x;
        matmul(
            isa,
            &layer.down,
            &scratch.hq,
            x,
            hidden,
            0,
            Output::Accumulate,
        );
    }

    /// The logits `[wanted rows, vocab]` of the rows `wanted`: final norm and the output
    /// projection (the embeddings when the model ties them).
    fn logits(&self, scratch: &mut Scratch, wanted: &[usize]) -> Vec<f32> {
        let (isa, hidden, vocab) = (self.isa, self.config.hidden, self.config.vocab_size);
        let eps = self.config.rms_eps as f32;
        let mut logits = vec![0f32; wanted.len() * vocab];
        if wanted.is_empty() {
            return logits;
        }
        scratch.xq.reset(wanted.len());
        {
            let writer = scratch.xq.writer();
            for (i, &r) in wanted.iter().enumerate() {
                // SAFETY: one thread writes these rows.
                let (q, d, s) = unsafe { writer.blocks(i, 0..hidden / BLOCK) };
                let x = &scratch.x[r * hidden..(r + 1) * hidden];
                quant::rms_norm_quantize(isa, x, &self.final_norm, eps, q, d, s);
            }
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embeddings);
        matmul(isa, head, &scratch.xq, &mut logits, vocab, 0, Output::Store);
        logits
    }
}

/// Each sequence's first row in the step, its rows, its start position and its blocks.
fn sequence_rows<'a>(batch: &'a [StepSequence<'_>]) -> Vec<SequenceRows<'a>> {
    let mut first_row = 0;
    batch
        .iter()
        .map(|seq| {
            let rows = SequenceRows {
                first_row,
                rows: seq.tokens.len(),
                start: seq.table.len,
                blocks: &seq.table.blocks,
            };
            first_row += seq.tokens.len();
            rows
        })
        .collect()
}

/// The row of each sequence's last token, for the sequences that want logits.
fn rows_wanting_logits(batch: &[StepSequence<'_>]) -> Vec<usize> {
    let mut end = 0;
    let mut wanted = Vec::new();
    for seq in batch {
        end += seq.tokens.len();
        if seq.wants_logits {
            wanted.push(end - 1);
        }
    }
    wanted
}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// RMSNorm of each of the first `xq.rows()` rows of `x`, quantized into `xq`.
fn norm_quantize(
    isa: Isa,
    x: &[f32],
    k: usize,
    weight: &[f32],
    eps: f32,
    xq: &mut QuantizedRows,
    grain: usize,
) {
    let writer = xq.writer();
    parallel::for_each_chunk(xq.rows(), grain, |_, range| {
        for r in range {
            // SAFETY: rows are disjoint between work items.
            let (q, d, s) = unsafe { writer.blocks(r, 0..k / BLOCK) };
            quant::rms_norm_quantize(isa, &x[r * k..(r + 1) * k], weight, eps, q, d, s);
        }
    });
}

/// Quantizes each of the first `xq.rows()` rows of `x` into `xq`.
fn quantize_rows(isa: Isa, x: &[f32], k: usize, xq: &mut QuantizedRows, grain: usize) {
    let writer = xq.writer();
    parallel::for_each_chunk(xq.rows(), grain, |_, range| {
        for r in range {
            // SAFETY: rows are disjoint between work items.
            let (q, d, s) = unsafe { writer.blocks(r, 0..k / BLOCK) };
            quant::quantize(isa, &x[r * k..(r + 1) * k], q, d, s);
        }
    });
}

/// RoPE cosines and sines `[context_length, head_dim / 2]`, as candle's reference computes
/// them (f32 angles `position * base^(-2i / head_dim)`).
fn rope_tables(c: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let half = c.head_dim / 2;
    let inv_freq: Vec<f32> = (0..c.head_dim)
        .step_by(2)
        .map(|i| 1.0 / c.rope_base.powf(i as f32 / c.head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(c.context_length * half);
    let mut sin = Vec::with_capacity(c.context_length * half);
    for p in 0..c.context_length {
        for &f in &inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

//! One step's stages, in the order `CpuLlama::forward_from` runs them: rows laid out and
//! checked, buffers sized, attention work planned, tokens embedded; per layer the attention
//! half (norm, Q/K/V, RoPE and the new keys and values into the pool, attention, output
//! projection) and the MLP half; the logits of the rows that sample.

use cpu_kernels::attention::{self, SequenceRows};
use cpu_kernels::isa::Isa;
use cpu_kernels::kv::{KvLayout, KvPool};
use cpu_kernels::math;
use cpu_kernels::matmul::{matmul, Output, PackedMatrix};
use cpu_kernels::parallel::{self, SharedMut};
use cpu_kernels::quant::{self, QuantizedRows};

use super::adapters::{Site, StepAdapters};
use super::{CpuLlama, Error, Layer, Scratch, StepSequence};
use crate::config::{Architecture, RopeStyle};

impl CpuLlama {
    /// Checks the batch against the model and the pool, and lays out one row per new token
    /// (`scratch.rows`); returns the longest sequence after the step.
    pub(super) fn lay_out_rows(
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
    pub(super) fn size_scratch(&self, scratch: &mut Scratch, max_len: usize) {
        let c = &self.config;
        let t = scratch.rows.len();
        let qkv_dim = c.q_dim() + 2 * c.kv_dim();
        grow(&mut scratch.x, t * c.hidden);
        grow(&mut scratch.qkv, t * qkv_dim);
        grow(&mut scratch.attn, t * c.q_dim());
        grow(&mut scratch.gate_up, t * 2 * c.ffn);
        scratch.xq.reset(t);
        scratch.aq.reset(t);
        scratch.hq.reset(t);
        let group_rows = self.heads(0).group().min(attention::MAX_GROUP);
        if self.layers.iter().any(|l| l.post_norms.is_some()) {
            grow(&mut scratch.post, t * c.hidden);
        }
        for s in &mut scratch.scores {
            grow(s, group_rows * max_len);
        }
    }

    /// Each row's RoPE cosines and sines, from its position: angles `position * scale *
    /// frequency` in f32, the arithmetic of a precomputed table.
    pub(super) fn rope_angles(&self, scratch: &mut Scratch) {
        let rows = &scratch.rows;
        let scale = self.config.rope_position_scale;
        angles(
            rows,
            &self.inv_freq,
            scale,
            &mut scratch.rope_cos,
            &mut scratch.rope_sin,
        );
        if let Some(inv_freq) = &self.inv_freq_sliding {
            let (cos, sin) = (&mut scratch.rope_cos_sliding, &mut scratch.rope_sin_sliding);
            angles(rows, inv_freq, 1.0, cos, sin);
        }
    }

    /// Attention work items: (sequence, KV head, run of queries). Long prefills are cut into
    /// runs so that both threads get work even for one sequence.
    pub(super) fn plan_attention(&self, scratch: &mut Scratch, batch: &[StepSequence<'_>]) {
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

    /// The new tokens' embeddings into the residual stream (scaled, for Gemma).
    pub(super) fn embed(&self, scratch: &mut Scratch, batch: &[StepSequence<'_>]) {
        let (hidden, scale) = (self.config.hidden, self.config.embedding_scale);
        let tokens = batch.iter().flat_map(|seq| seq.tokens.iter());
        for (x, &token) in scratch.x.chunks_exact_mut(hidden).zip(tokens) {
            self.embeddings.dequantize_row(token as usize, x);
            if scale != 1.0 {
                x.iter_mut().for_each(|v| *v *= scale);
            }
        }
    }

    /// A layer's attention half: norm, Q/K/V (plus adapters' terms), RoPE and the new keys and
    /// values into the pool, attention, and the output projection (plus adapters' terms) added
    /// into the residual stream.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_block(
        &self,
        index: usize,
        layer: &Layer,
        kv: &mut KvPool,
        scratch: &mut Scratch,
        seqs: &[SequenceRows<'_>],
        adapters: &StepAdapters<'_>,
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
        layer.qkv.matmul(isa, xq, &mut scratch.qkv, qkv_dim);
        if adapters.any() {
            // Adapters read the normed input in f32 (as llama.cpp's `A·x`), before biases.
            normed_rows(scratch, hidden, &layer.attn_norm, eps);
            let (rows, normed) = (&scratch.rows, &scratch.normed);
            let qkv = &mut scratch.qkv;
            adapters.add(index, Site::Qkv, rows, normed, hidden, qkv, qkv_dim);
        }
        self.rope_and_store(index, layer, kv, scratch, seqs, row_grain);
        self.attend(index, kv, scratch, seqs);
        let q_dim = self.config.q_dim();
        quantize_rows(isa, &scratch.attn, q_dim, &mut scratch.aq, row_grain);
        let post_norm = layer.post_norms.as_ref().map(|(attn, _)| attn.as_slice());
        let adapted = (adapters, index);
        self.add_to_residual(
            &layer.wo,
            post_norm,
            Input::Attention,
            scratch,
            adapted,
            row_grain,
        );
    }

    /// Biases and QK-norm where the architecture has them, RoPE on each row's queries and
    /// keys, in place, and its key and value written to its slot of the pool in f16.
    pub(super) fn rope_and_store(
        &self,
        layer: usize,
        weights: &Layer,
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
        let (rope_cos, rope_sin) = match c.is_sliding(layer) {
            true => (&scratch.rope_cos_sliding, &scratch.rope_sin_sliding),
            false => (&scratch.rope_cos, &scratch.rope_sin),
        };
        let eps = c.rms_eps as f32;
        let rope = match c.architecture.rope_style() {
            RopeStyle::AdjacentPairs => math::rope,
            RopeStyle::Halves => math::rope_halves,
        };
        parallel::for_each_chunk(t, row_grain, |_, range| {
            for r in range {
                let (s, pos) = rows[r];
                // SAFETY: row `r` of `qkv` belongs to this work item alone.
                let row = unsafe { qkv.slice(r * qkv_dim..(r + 1) * qkv_dim) };
                if let Some(bias) = &weights.qkv_bias {
                    row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                }
                if let Some((q_norm, k_norm)) = &weights.qk_norm {
                    let (queries, keys) = row[..q_dim + kv_dim].split_at_mut(q_dim);
                    for head in queries.chunks_exact_mut(hd) {
                        quant::rms_norm_in_place(head, q_norm, eps);
                    }
                    for head in keys.chunks_exact_mut(hd) {
                        quant::rms_norm_in_place(head, k_norm, eps);
                    }
                }
                let angles = r * hd / 2..(r + 1) * hd / 2;
                let (cos, sin) = (&rope_cos[angles.clone()], &rope_sin[angles]);
                for head in row[..q_dim + kv_dim].chunks_exact_mut(hd) {
                    rope(head, cos, sin);
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
    pub(super) fn attend(
        &self,
        layer: usize,
        kv: &KvPool,
        scratch: &mut Scratch,
        seqs: &[SequenceRows<'_>],
    ) {
        let (q_dim, t) = (self.config.q_dim(), scratch.rows.len());
        let qkv_dim = q_dim + 2 * self.config.kv_dim();
        let heads = self.heads(layer);
        let out = SharedMut::new(&mut scratch.attn[..t * q_dim]);
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
                        q_dim,
                        scores,
                    )
                };
            }
        });
    }

    /// A layer's MLP half: norm, gate and up as one product (plus adapters' terms), the
    /// product of SiLU(gate) and up quantized for the down projection, added (plus adapters'
    /// terms) into the residual stream.
    pub(super) fn mlp_block(
        &self,
        index: usize,
        layer: &Layer,
        scratch: &mut Scratch,
        adapters: &StepAdapters<'_>,
        row_grain: usize,
    ) {
        let (isa, hidden, ffn) = (self.isa, self.config.hidden, self.config.ffn);
        let eps = self.config.rms_eps as f32;
        let gelu = self.config.architecture == Architecture::Gemma3;
        let t = scratch.rows.len();
        let xq = &mut scratch.xq;
        norm_quantize(isa, &scratch.x, hidden, &layer.ffn_norm, eps, xq, row_grain);
        let gate_up = &mut scratch.gate_up;
        layer.gate_up.matmul(isa, xq, gate_up, 2 * ffn);
        if adapters.any() {
            normed_rows(scratch, hidden, &layer.ffn_norm, eps);
            let (rows, normed) = (&scratch.rows, &scratch.normed);
            let gate_up = &mut scratch.gate_up;
            adapters.add(index, Site::GateUp, rows, normed, hidden, gate_up, 2 * ffn);
        }
        {
            let gate_up = SharedMut::new(&mut scratch.gate_up[..t * 2 * ffn]);
            let writer = scratch.hq.writer();
            parallel::for_each_chunk(t, row_grain, |_, range| {
                for r in range {
                    // SAFETY: rows are disjoint between work items.
                    unsafe {
                        let row = gate_up.slice(r * 2 * ffn..(r + 1) * 2 * ffn);
                        let (gate, up) = row.split_at_mut(ffn);
                        match gelu {
                            true => math::gelu_mul(gate, up),
                            false => math::silu_mul(isa, gate, up),
                        }
                        writer.quantize(isa, r, gate);
                    }
                }
            });
        }
        let post_norm = layer.post_norms.as_ref().map(|(_, mlp)| mlp.as_slice());
        let adapted = (adapters, index);
        self.add_to_residual(
            &layer.down,
            post_norm,
            Input::Mlp,
            scratch,
            adapted,
            row_grain,
        );
    }

    /// A block's output projection added into the residual stream: directly, or first into
    /// `scratch.post`, RMS-normed with `post_norm`, then added (Gemma 3).
    /// Adapters' terms (the step's adapters, the layer) join the projection's output before
    /// the post-norm, as they would with their weights merged.
    fn add_to_residual(
        &self,
        w: &PackedMatrix,
        post_norm: Option<&[f32]>,
        input: Input,
        scratch: &mut Scratch,
        (adapters, layer): (&StepAdapters<'_>, usize),
        row_grain: usize,
    ) {
        let (isa, hidden) = (self.isa, self.config.hidden);
        let x_in = match input {
            Input::Attention => &scratch.aq,
            Input::Mlp => &scratch.hq,
        };
        // The adapters' input in f32: the attention's output, or SiLU(gate) * up (left in the
        // gate half of each `gate_up` row).
        let (site, adapter_in, in_width) = match input {
            Input::Attention => (Site::Output, &scratch.attn, self.config.q_dim()),
            Input::Mlp => (Site::Down, &scratch.gate_up, 2 * self.config.ffn),
        };
        let rows = &scratch.rows;
        let Some(weight) = post_norm else {
            matmul(isa, w, x_in, &mut scratch.x, hidden, 0, Output::Accumulate);
            let x = &mut scratch.x;
            adapters.add(layer, site, rows, adapter_in, in_width, x, hidden);
            return;
        };
        let t = scratch.rows.len();
        matmul(isa, w, x_in, &mut scratch.post, hidden, 0, Output::Store);
        let post = &mut scratch.post;
        adapters.add(layer, site, rows, adapter_in, in_width, post, hidden);
        let eps = self.config.rms_eps as f32;
        let x = SharedMut::new(&mut scratch.x[..t * hidden]);
        let post = SharedMut::new(&mut scratch.post[..t * hidden]);
        parallel::for_each_chunk(t, row_grain, |_, range| {
            for r in range {
                // SAFETY: rows are disjoint between work items.
                let (x, y) = unsafe {
                    (
                        x.slice(r * hidden..(r + 1) * hidden),
                        post.slice(r * hidden..(r + 1) * hidden),
                    )
                };
                quant::rms_norm_in_place(y, weight, eps);
                x.iter_mut().zip(y.iter()).for_each(|(x, y)| *x += y);
            }
        });
    }

    /// The logits `[wanted rows, vocab]` of the rows `wanted`: final norm and the output
    /// projection (the embeddings when the model ties them).
    pub(super) fn logits(&self, scratch: &mut Scratch, wanted: &[usize]) -> Vec<f32> {
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
                let x = &scratch.x[r * hidden..(r + 1) * hidden];
                unsafe { writer.rms_norm_quantize(isa, i, x, &self.final_norm, eps) };
            }
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embeddings);
        matmul(isa, head, &scratch.xq, &mut logits, vocab, 0, Output::Store);
        logits
    }
}

/// Each sequence's first row in the step, its rows, its start position and its blocks.
pub(super) fn sequence_rows<'a>(batch: &'a [StepSequence<'_>]) -> Vec<SequenceRows<'a>> {
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
pub(super) fn rows_wanting_logits(batch: &[StepSequence<'_>]) -> Vec<usize> {
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

/// Which quantized activations an output projection reads.
#[derive(Clone, Copy)]
enum Input {
    /// The attention's output (`scratch.aq`).
    Attention,
    /// The gated MLP's hidden layer (`scratch.hq`).
    Mlp,
}

/// RoPE cosines and sines of each row's position for frequencies `inv_freq`.
fn angles(
    rows: &[(usize, usize)],
    inv_freq: &[f32],
    position_scale: f32,
    cos: &mut Vec<f32>,
    sin: &mut Vec<f32>,
) {
    cos.clear();
    sin.clear();
    cos.reserve(rows.len() * inv_freq.len());
    sin.reserve(rows.len() * inv_freq.len());
    for &(_, p) in rows {
        let position = p as f32 * position_scale;
        for &f in inv_freq {
            let angle = position * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
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
            unsafe { writer.rms_norm_quantize(isa, r, &x[r * k..(r + 1) * k], weight, eps) };
        }
    });
}

/// Each row of the residual stream RMS-normed with `weight` into `scratch.normed` (f32).
fn normed_rows(scratch: &mut Scratch, hidden: usize, weight: &[f32], eps: f32) {
    let t = scratch.rows.len();
    grow(&mut scratch.normed, t * hidden);
    let normed = &mut scratch.normed[..t * hidden];
    normed.copy_from_slice(&scratch.x[..t * hidden]);
    for row in normed.chunks_exact_mut(hidden) {
        quant::rms_norm_in_place(row, weight, eps);
    }
}

/// Quantizes each of the first `xq.rows()` rows of `x` into `xq`.
fn quantize_rows(isa: Isa, x: &[f32], k: usize, xq: &mut QuantizedRows, grain: usize) {
    let writer = xq.writer();
    parallel::for_each_chunk(xq.rows(), grain, |_, range| {
        for r in range {
            // SAFETY: rows are disjoint between work items.
            unsafe { writer.quantize(isa, r, &x[r * k..(r + 1) * k]) };
        }
    });
}

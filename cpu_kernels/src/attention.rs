//! Causal attention of a step's queries against the paged f16 KV cache, read in place.
//!
//! A work item is one (sequence, KV head, run of query rows): it walks the sequence's block
//! table and streams each block's keys and values straight from the pool. The query heads that
//! share a KV head (grouped-query attention) are computed together, so each key and value is
//! converted from f16 once per query row for the whole group.

use super::isa::Isa;
use super::kv::{KvLayout, KvPool};
use super::math;
use super::parallel::SharedMut;

/// Query heads a work item computes at once (larger groups are split).
pub const MAX_GROUP: usize = 8;

/// The attention geometry of a model.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// What multiplies each query-key dot product (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
    /// Sliding-window layers: how many positions a query sees, its own included (`None`:
    /// the whole sequence so far).
    pub window: Option<usize>,
}

impl Heads {
    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.n_heads / self.kv_heads
    }
}

/// One sequence's part of a step.
#[derive(Debug, Clone, Copy)]
pub struct SequenceRows<'a> {
    /// Its first row among the step's tokens.
    pub first_row: usize,
    /// Its new tokens.
    pub rows: usize,
    /// Position of its first new token.
    pub start: usize,
    /// Its block table.
    pub blocks: &'a [u32],
}

/// Attention output of query rows `queries` (indices into the sequence's new tokens) of one
/// KV head's group. `qkv` holds each token's roped queries at column 0 with `ldq` columns per
/// row; the output goes to `out` columns `head * head_dim ..` with `ldo` columns per row.
/// `scores` is scratch for `min(group, MAX_GROUP)` rows of the sequence's length.
///
/// # Safety
/// No other thread may write the output columns of these heads for these rows meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn attend(
    isa: Isa,
    pool: &KvPool,
    layer: usize,
    heads: Heads,
    seq: SequenceRows<'_>,
    kv_head: usize,
    queries: std::ops::Range<usize>,
    qkv: &[f32],
    ldq: usize,
    out: SharedMut<f32>,
    ldo: usize,
    scores: &mut [f32],
) {
    let hd = heads.head_dim;
    let scale = heads.scale;
    let group = heads.group();
    for i in queries {
        let row = seq.first_row + i;
        let len = seq.start + i + 1;
        // Keys before `first` are outside a sliding window: never read, weight zero.
        let first = heads.window.map_or(0, |w| len.saturating_sub(w));
        let mut g0 = 0;
        while g0 < group {
            let gn = (group - g0).min(MAX_GROUP);
            let first_head = kv_head * group + g0;
            let q = &qkv[row * ldq + first_head * hd..row * ldq + (first_head + gn) * hd];
            let scores = &mut scores[..gn * len];
            for s in scores.chunks_exact_mut(len) {
                s[..first].fill(f32::NEG_INFINITY);
            }
            let keys = first..len;
            key_scores(
                isa,
                pool,
                layer,
                seq.blocks,
                kv_head,
                q,
                gn,
                keys.clone(),
                scale,
                scores,
            );
            let mut inv = [0f32; MAX_GROUP];
            for (g, s) in scores.chunks_exact_mut(len).enumerate() {
                let max = s.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                inv[g] = 1.0 / math::exp_sub_sum(isa, s, max);
            }
            let o = out.slice(row * ldo + first_head * hd..row * ldo + (first_head + gn) * hd);
            weighted_values(isa, pool, layer, seq.blocks, kv_head, scores, gn, keys, o);
            for (g, o) in o.chunks_exact_mut(hd).enumerate() {
                o.iter_mut().for_each(|v| *v *= inv[g]);
            }
            g0 += gn;
        }
    }
}

/// `scores[g * len + j] = scale * q_g . k_j` for positions `j` in `keys` (`len` is its end).
#[allow(clippy::too_many_arguments)]
fn key_scores(
    isa: Isa,
    pool: &KvPool,
    layer: usize,
    blocks: &[u32],
    kv_head: usize,
    q: &[f32],
    group: usize,
    keys: std::ops::Range<usize>,
    scale: f32,
    scores: &mut [f32],
) {
    let hd = pool.layout().head_dim;
    let len = keys.end;
    let data = pool.data().0;
    for (j, at) in positions(pool.layout(), layer, blocks, kv_head, keys) {
        let k = &data[at..at + hd];
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2, FMA and F16C are present for these families.
            Isa::Avx2 | Isa::Avx512Vnni if hd.is_multiple_of(8) => unsafe {
                x86::dots(q, k, group, scale, scores, len, j)
            },
            _ => {
                for g in 0..group {
                    let qg = &q[g * hd..(g + 1) * hd];
                    let dot: f32 = qg
                        .iter()
                        .zip(k)
                        .map(|(&a, &b)| a * half::f16::from_bits(b).to_f32())
                        .sum();
                    scores[g * len + j] = dot * scale;
                }
            }
        }
    }
}

/// `out_g = sum_j weights[g * len + j] * v_j` over positions `j` in `keys` (not yet
/// normalised).
#[allow(clippy::too_many_arguments)]
fn weighted_values(
    isa: Isa,
    pool: &KvPool,
    layer: usize,
    blocks: &[u32],
    kv_head: usize,
    weights: &[f32],
    group: usize,
    keys: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let hd = pool.layout().head_dim;
    let len = keys.end;
    let values = pool.data().1;
    out.iter_mut().for_each(|v| *v = 0.0);
    for (j, at) in positions(pool.layout(), layer, blocks, kv_head, keys) {
        let v = &values[at..at + hd];
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 | Isa::Avx512Vnni if hd.is_multiple_of(8) => unsafe {
                x86::axpys(v, weights, group, len, j, out)
            },
            _ => {
                for g in 0..group {
                    let w = weights[g * len + j];
                    for (o, &b) in out[g * hd..(g + 1) * hd].iter_mut().zip(v) {
                        *o += w * half::f16::from_bits(b).to_f32();
                    }
                }
            }
        }
    }
}

/// Positions `keys` of one sequence's KV head, walked through its block table: `(j, at)`,
/// the position and where its `head_dim` values start in the pool's keys (or values: both
/// share the layout). Blocks wholly before `keys.start` are not visited.
fn positions(
    layout: KvLayout,
    layer: usize,
    blocks: &[u32],
    kv_head: usize,
    keys: std::ops::Range<usize>,
) -> impl Iterator<Item = (usize, usize)> + '_ {
    let (bs, hd) = (layout.block_size, layout.head_dim);
    let (first, len) = (keys.start, keys.end);
    blocks
        .iter()
        .enumerate()
        .take(len.div_ceil(bs))
        .skip(first / bs)
        .flat_map(move |(bi, &block)| {
            let slab = layout.slab(layer, block as usize, kv_head);
            let from = first.saturating_sub(bi * bs);
            (from..bs.min(len - bi * bs)).map(move |s| (bi * bs + s, slab + s * hd))
        })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dots(
        q: &[f32],
        k: &[u16],
        group: usize,
        scale: f32,
        scores: &mut [f32],
        len: usize,
        j: usize,
    ) {
        let hd = k.len();
        let mut acc = [_mm256_setzero_ps(); super::MAX_GROUP];
        let mut c = 0;
        while c < hd {
            let kc = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(c) as *const __m128i));
            for (g, acc) in acc.iter_mut().enumerate().take(group) {
                *acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(g * hd + c)), kc, *acc);
            }
            c += 8;
        }
        for (g, acc) in acc.iter().enumerate().take(group) {
            let s = _mm_add_ps(_mm256_castps256_ps128(*acc), _mm256_extractf128_ps(*acc, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            *scores.get_unchecked_mut(g * len + j) = _mm_cvtss_f32(s) * scale;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpys(
        v: &[u16],
        weights: &[f32],
        group: usize,
        len: usize,
        j: usize,
        out: &mut [f32],
    ) {
        let hd = v.len();
        let mut w = [_mm256_setzero_ps(); super::MAX_GROUP];
        for (g, w) in w.iter_mut().enumerate().take(group) {
            *w = _mm256_set1_ps(*weights.get_unchecked(g * len + j));
        }
        let o = out.as_mut_ptr();
        let mut c = 0;
        while c < hd {
            let vc = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(c) as *const __m128i));
            for (g, w) in w.iter().enumerate().take(group) {
                let p = o.add(g * hd + c);
                _mm256_storeu_ps(p, _mm256_fmadd_ps(*w, vc, _mm256_loadu_ps(p)));
            }
            c += 8;
        }
    }
}

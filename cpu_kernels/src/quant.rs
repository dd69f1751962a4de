//! Activations quantized to int8 for the integer matrix kernels, with RMSNorm fused in.
//!
//! Each row is cut into blocks of 32 values; a block keeps int8 quants `q`, its scale
//! `d = max|x| / 127` and `s = d * sum(q)`, which the 4-bit kernels need for the weights'
//! offsets (`w = d_w * q_w + m_w`, so `x . w = d_w * d * (q . q_w) + m_w * s`). This is the
//! layout llama.cpp calls Q8_1; the scales stay f32 here.

use super::isa::Isa;

/// Values per quantization block, for weights and activations alike.
pub const BLOCK: usize = 32;

/// A matrix of activation rows in int8 blocks, reused from step to step.
pub struct QuantizedRows {
    k: usize,
    rows: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

/// One quantized row, borrowed.
#[derive(Clone, Copy)]
pub struct QuantizedRow<'a> {
    /// `k` int8 quants.
    pub q: &'a [i8],
    /// One scale per block.
    pub d: &'a [f32],
    /// `d * sum(q)` per block.
    pub s: &'a [f32],
}

impl QuantizedRows {
    /// An empty matrix of rows of `k` values (`k` a multiple of [`BLOCK`]).
    pub fn new(k: usize) -> Self {
        assert_eq!(k % BLOCK, 0, "row length {k} is not a multiple of {BLOCK}");
        Self {
            k,
            rows: 0,
            q: Vec::new(),
            d: Vec::new(),
            s: Vec::new(),
        }
    }

    /// Makes room for `rows` rows; allocates only when more rows than ever before are asked.
    pub fn reset(&mut self, rows: usize) {
        let nb = self.k / BLOCK;
        if self.q.len() < rows * self.k {
            self.q.resize(rows * self.k, 0);
            self.d.resize(rows * nb, 0.0);
            self.s.resize(rows * nb, 0.0);
        }
        self.rows = rows;
    }

    /// Number of rows in use.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Row `r`.
    pub fn row(&self, r: usize) -> QuantizedRow<'_> {
        debug_assert!(r < self.rows);
        let nb = self.k / BLOCK;
        QuantizedRow {
            q: &self.q[r * self.k..(r + 1) * self.k],
            d: &self.d[r * nb..(r + 1) * nb],
            s: &self.s[r * nb..(r + 1) * nb],
        }
    }

    /// Parallel writers' view: each worker fills whole rows no other worker touches.
    pub fn writer(&mut self) -> RowsWriter {
        RowsWriter {
            k: self.k,
            q: super::parallel::SharedMut::new(&mut self.q),
            d: super::parallel::SharedMut::new(&mut self.d),
            s: super::parallel::SharedMut::new(&mut self.s),
        }
    }
}

/// Write access to the rows of a [`QuantizedRows`] from several workers.
#[derive(Clone, Copy)]
pub struct RowsWriter {
    k: usize,
    q: super::parallel::SharedMut<i8>,
    d: super::parallel::SharedMut<f32>,
    s: super::parallel::SharedMut<f32>,
}

impl RowsWriter {
    /// Quants, scales and sums of row `r`, or of the blocks `blocks` of it.
    ///
    /// # Safety
    /// No other thread may write the same row's blocks while these slices live.
    #[allow(clippy::mut_from_ref)] // the writer hands out disjoint rows (see `SharedMut`)
    pub unsafe fn blocks(
        &self,
        r: usize,
        blocks: std::ops::Range<usize>,
    ) -> (&mut [i8], &mut [f32], &mut [f32]) {
        let nb = self.k / BLOCK;
        let b0 = r * nb + blocks.start;
        let b1 = r * nb + blocks.end;
        (
            self.q.slice(b0 * BLOCK..b1 * BLOCK),
            self.d.slice(b0..b1),
            self.s.slice(b0..b1),
        )
    }
}

/// Quantizes `x` (whole blocks) into `q`, `d`, `s`.
pub fn quantize(isa: Isa, x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    debug_assert!(
        x.len().is_multiple_of(BLOCK) && q.len() == x.len() && d.len() == x.len() / BLOCK
    );
    for (b, block) in x.chunks_exact(BLOCK).enumerate() {
        let block: &[f32; BLOCK] = block.try_into().expect("whole block");
        let quants: &mut [i8; BLOCK] = (&mut q[b * BLOCK..(b + 1) * BLOCK])
            .try_into()
            .expect("whole block");
        (d[b], s[b]) = quantize_block(isa, block, quants);
    }
}

/// RMSNorm of `x` times `weight`, quantized: what every projection after a norm reads.
pub fn rms_norm_quantize(
    isa: Isa,
    x: &[f32],
    weight: &[f32],
    eps: f32,
    q: &mut [i8],
    d: &mut [f32],
    s: &mut [f32],
) {
    let scale = rms_scale(x, eps);
    let mut y = [0f32; BLOCK];
    for (b, (xb, wb)) in x
        .chunks_exact(BLOCK)
        .zip(weight.chunks_exact(BLOCK))
        .enumerate()
    {
        for ((y, &x), &w) in y.iter_mut().zip(xb).zip(wb) {
            *y = x * scale * w;
        }
        let quants: &mut [i8; BLOCK] = (&mut q[b * BLOCK..(b + 1) * BLOCK])
            .try_into()
            .expect("whole block");
        (d[b], s[b]) = quantize_block(isa, &y, quants);
    }
}

/// RMSNorm of `x` times `weight` into `out`, in f32 (no quantization).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let scale = rms_scale(x, eps);
    for ((o, &x), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = x * scale * w;
    }
}

/// RMSNorm of `x` times `weight`, in place (QK-norm of one head).
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let scale = rms_scale(x, eps);
    for (x, &w) in x.iter_mut().zip(weight) {
        *x *= scale * w;
    }
}

/// `1 / sqrt(mean(x^2) + eps)`, summed in eight lanes (vectorizes; same order on every CPU).
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for &v in rest {
        sum += v * v;
    }
    1.0 / (sum / x.len() as f32 + eps).sqrt()
}

/// Quantizes one block; returns `(d, d * sum(q))`.
fn quantize_block(isa: Isa, x: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> (f32, f32) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::detect` chose AVX2 or better only where the CPU has AVX2.
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { quantize_block_avx2(x, q) },
        _ => quantize_block_portable(x, q),
    }
}

/// The reference quantization: round half to even (as the SIMD path's `cvtps2dq` does).
pub(crate) fn quantize_block_portable(x: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> (f32, f32) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(x) {
        let r = (v * id).round_ties_even() as i32;
        *q = r as i8;
        sum += r;
    }
    (d, d * sum as f32)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_block_avx2(x: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let p = x.as_ptr();
    let v = [
        _mm256_loadu_ps(p),
        _mm256_loadu_ps(p.add(8)),
        _mm256_loadu_ps(p.add(16)),
        _mm256_loadu_ps(p.add(24)),
    ];
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_andnot_ps(sign, v[0]);
    for vi in &v[1..] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    let amax = _mm_cvtss_f32(m4);
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
    // Multiply then round half to even: the same arithmetic as the portable path.
    let i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v[0], id));
    let i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v[1], id));
    let i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v[2], id));
    let i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v[3], id));
    let total = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
    let t = _mm_add_epi32(
        _mm256_castsi256_si128(total),
        _mm256_extracti128_si256(total, 1),
    );
    let t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0b01_00_11_10));
    let t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0b10_11_00_01));
    let sum = _mm_cvtsi128_si32(t);
    // Pack 32 x i32 to 32 x i8; packs interleave 128-bit lanes, the permute restores order.
    let a = _mm256_packs_epi32(i0, i1);
    let b = _mm256_packs_epi32(i2, i3);
    let packed = _mm256_packs_epi16(a, b);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let packed = _mm256_permutevar8x32_epi32(packed, order);
    _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, packed);
    (d, d * sum as f32)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) (a small LCG: no dependency, the same on every run).
    pub(crate) fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn every_kernel_family_quantizes_identically() {
        let mut x = random(32 * 40, 7);
        // Exact halves (ties) and a zero block.
        x[0] = 1.0;
        x[1] = 0.5 / 127.0 * 1.0;
        for v in &mut x[32..64] {
            *v = 0.0;
        }
        let reference: Vec<_> = x
            .chunks_exact(BLOCK)
            .map(|b| {
                let mut q = [0i8; BLOCK];
                let ds = quantize_block_portable(b.try_into().unwrap(), &mut q);
                (q, ds)
            })
            .collect();
        for isa in Isa::all_supported() {
            for (b, expected) in x.chunks_exact(BLOCK).zip(&reference) {
                let mut q = [0i8; BLOCK];
                let ds = quantize_block(isa, b.try_into().unwrap(), &mut q);
                assert_eq!((q, ds), *expected, "{isa:?}");
            }
        }
    }

    #[test]
    fn quantization_error_is_within_half_a_step() {
        let x = random(32 * 8, 3);
        let (mut q, mut d, mut s) = (vec![0i8; x.len()], vec![0f32; 8], vec![0f32; 8]);
        quantize(Isa::detect(), &x, &mut q, &mut d, &mut s);
        for (b, block) in x.chunks_exact(BLOCK).enumerate() {
            let sum: i32 = q[b * BLOCK..(b + 1) * BLOCK]
                .iter()
                .map(|&v| v as i32)
                .sum();
            assert!((s[b] - d[b] * sum as f32).abs() <= 1e-6 * s[b].abs().max(1.0));
            for (i, &v) in block.iter().enumerate() {
                let back = q[b * BLOCK + i] as f32 * d[b];
                assert!((back - v).abs() <= d[b] * 0.5 + 1e-7, "{v} -> {back}");
            }
        }
    }

    #[test]
    fn fused_norm_matches_norm_then_quantize() {
        let x = random(576, 5);
        let w = random(576, 6);
        let mut normed = vec![0f32; 576];
        rms_norm(&x, &w, 1e-5, &mut normed);
        let mean_sq: f32 = x.iter().map(|v| v * v).sum::<f32>() / 576.0;
        for (i, &n) in normed.iter().enumerate() {
            let expected = x[i] / (mean_sq + 1e-5).sqrt() * w[i];
            assert!((n - expected).abs() < 1e-5, "{n} vs {expected}");
        }
        let isa = Isa::detect();
        let (mut q1, mut d1, mut s1) = (vec![0i8; 576], vec![0f32; 18], vec![0f32; 18]);
        let (mut q2, mut d2, mut s2) = (vec![0i8; 576], vec![0f32; 18], vec![0f32; 18]);
        rms_norm_quantize(isa, &x, &w, 1e-5, &mut q1, &mut d1, &mut s1);
        quantize(isa, &normed, &mut q2, &mut d2, &mut s2);
        assert_eq!((q1, d1, s1), (q2, d2, s2));
    }
}

//! Activations quantized to int8 for the integer matrix kernels, with RMSNorm fused in.
//!
//! Each row is kept in two forms, both written from the same f32 values:
//! - Blocks of 32 values: int8 quants `q`, the block's scale `d = max|x| / 127` and
//!   `s = d * sum(q)`, which the 4-bit kernels need for the weights' offsets (`w = d_w * q_w +
//!   m_w`, so `x . w = d_w * d * (q . q_w) + m_w * s`). This is the layout llama.cpp calls
//!   Q8_1; the scales stay f32 here. Every weight kind but Q4_K and Q6_K reads it.
//! - Where asked for (rows that a Q4_K or Q6_K matrix reads; whole super-blocks of 256): int8
//!   quants with one scale per 256 values and the integer sums of each 32- and 16-value block
//!   (llama.cpp's Q8_K). Such a product sums a super-block's blocks in integers, each times its
//!   scale, and converts to f32 once per super-block.

use super::isa::Isa;

/// Values per quantization block, for weights and activations alike.
pub const BLOCK: usize = 32;
/// Values per super-block of the second form (a K-quant's super-block).
pub const SUPER: usize = 256;

/// A matrix of activation rows in int8 blocks, reused from step to step.
pub struct QuantizedRows {
    k: usize,
    rows: usize,
    /// Whether rows are also kept on one scale per super-block.
    super_form: bool,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    /// The super-block form (empty unless asked for).
    kq: Vec<i8>,
    kd: Vec<f32>,
    ksum: Vec<i16>,
    ksum16: Vec<i16>,
}

/// One quantized row in the block form, borrowed.
#[derive(Clone, Copy)]
pub struct QuantizedRow<'a> {
    /// `k` int8 quants.
    pub q: &'a [i8],
    /// One scale per block.
    pub d: &'a [f32],
    /// `d * sum(q)` per block.
    pub s: &'a [f32],
}

/// One row in the super-block form, borrowed.
#[derive(Clone, Copy)]
pub struct SuperRow<'a> {
    /// `k` int8 quants on one scale per super-block.
    pub kq: &'a [i8],
    /// One scale per super-block.
    pub kd: &'a [f32],
    /// The sum of `kq` over each block of 32.
    pub ksum: &'a [i16],
    /// The sum of `kq` over each half block of 16 (Q6_K's scales cover 16 weights).
    pub ksum16: &'a [i16],
}

impl QuantizedRows {
    /// An empty matrix of rows of `k` values (`k` a multiple of [`BLOCK`]) in the block form
    /// only.
    pub fn new(k: usize) -> Self {
        Self::with_forms(k, false)
    }

    /// An empty matrix of rows of `k` values, in the super-block form too if `super_form` (what
    /// Q4_K and Q6_K products read; `k` then a multiple of [`SUPER`]).
    pub fn with_forms(k: usize, super_form: bool) -> Self {
        assert_eq!(k % BLOCK, 0, "row length {k} is not a multiple of {BLOCK}");
        assert!(
            !super_form || k.is_multiple_of(SUPER),
            "row length {k} has no super-blocks"
        );
        Self {
            k,
            rows: 0,
            super_form,
            q: Vec::new(),
            d: Vec::new(),
            s: Vec::new(),
            kq: Vec::new(),
            kd: Vec::new(),
            ksum: Vec::new(),
            ksum16: Vec::new(),
        }
    }

    /// Whether rows are also kept on one scale per super-block.
    #[inline]
    pub fn has_super_blocks(&self) -> bool {
        self.super_form
    }

    /// Makes room for `rows` rows; allocates only when more rows than ever before are asked.
    pub fn reset(&mut self, rows: usize) {
        let nb = self.k / BLOCK;
        if self.q.len() < rows * self.k {
            self.q.resize(rows * self.k, 0);
            self.d.resize(rows * nb, 0.0);
            self.s.resize(rows * nb, 0.0);
            if self.super_form {
                self.kq.resize(rows * self.k, 0);
                self.kd.resize(rows * self.k / SUPER, 0.0);
                self.ksum.resize(rows * nb, 0);
                self.ksum16.resize(rows * nb * 2, 0);
            }
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
    #[inline(always)]
    pub fn row(&self, r: usize) -> QuantizedRow<'_> {
        debug_assert!(r < self.rows);
        let nb = self.k / BLOCK;
        QuantizedRow {
            q: &self.q[r * self.k..(r + 1) * self.k],
            d: &self.d[r * nb..(r + 1) * nb],
            s: &self.s[r * nb..(r + 1) * nb],
        }
    }

    /// Row `r` in the super-block form (empty slices if the rows do not keep it).
    #[inline(always)]
    pub fn super_row(&self, r: usize) -> SuperRow<'_> {
        debug_assert!(r < self.rows);
        if !self.super_form {
            return SuperRow {
                kq: &[],
                kd: &[],
                ksum: &[],
                ksum16: &[],
            };
        }
        let (nb, ns) = (self.k / BLOCK, self.k / SUPER);
        SuperRow {
            kq: &self.kq[r * self.k..(r + 1) * self.k],
            kd: &self.kd[r * ns..(r + 1) * ns],
            ksum: &self.ksum[r * nb..(r + 1) * nb],
            ksum16: &self.ksum16[r * nb * 2..(r + 1) * nb * 2],
        }
    }

    /// Parallel writers' view: each worker fills whole rows no other worker touches.
    pub fn writer(&mut self) -> RowsWriter {
        use super::parallel::SharedMut;
        RowsWriter {
            k: self.k,
            super_form: self.super_form,
            q: SharedMut::new(&mut self.q),
            d: SharedMut::new(&mut self.d),
            s: SharedMut::new(&mut self.s),
            kq: SharedMut::new(&mut self.kq),
            kd: SharedMut::new(&mut self.kd),
            ksum: SharedMut::new(&mut self.ksum),
            ksum16: SharedMut::new(&mut self.ksum16),
        }
    }
}

/// Write access to the rows of a [`QuantizedRows`] from several workers.
#[derive(Clone, Copy)]
pub struct RowsWriter {
    k: usize,
    super_form: bool,
    q: super::parallel::SharedMut<i8>,
    d: super::parallel::SharedMut<f32>,
    s: super::parallel::SharedMut<f32>,
    kq: super::parallel::SharedMut<i8>,
    kd: super::parallel::SharedMut<f32>,
    ksum: super::parallel::SharedMut<i16>,
    ksum16: super::parallel::SharedMut<i16>,
}

impl RowsWriter {
    /// Quantizes `x` (`k` values) into row `r`, in both forms.
    ///
    /// # Safety
    /// No other thread may write row `r` while this runs.
    pub unsafe fn quantize(&self, isa: Isa, r: usize, x: &[f32]) {
        self.write(isa, r, x, None);
    }

    /// RMSNorm of `x` times `weight`, quantized into row `r`: what every projection after a
    /// norm reads.
    ///
    /// # Safety
    /// As [`RowsWriter::quantize`].
    pub unsafe fn rms_norm_quantize(
        &self,
        isa: Isa,
        r: usize,
        x: &[f32],
        weight: &[f32],
        eps: f32,
    ) {
        self.write(isa, r, x, Some((weight, rms_scale(x, eps))));
    }

    /// Row `r` from `x`, normed by `(weight, scale)` if given, chunk by chunk (a super-block,
    /// or a block where the row has no super-block form).
    unsafe fn write(&self, isa: Isa, r: usize, x: &[f32], norm: Option<(&[f32], f32)>) {
        assert_eq!(x.len(), self.k, "a row of {} values", self.k);
        let nb = self.k / BLOCK;
        let (q, d, s) = (
            self.q.slice(r * self.k..(r + 1) * self.k),
            self.d.slice(r * nb..(r + 1) * nb),
            self.s.slice(r * nb..(r + 1) * nb),
        );
        let chunk = if self.super_form { SUPER } else { BLOCK };
        let mut y = [0f32; SUPER];
        for (c, xc) in x.chunks_exact(chunk).enumerate() {
            let y = &mut y[..chunk];
            match norm {
                Some((weight, scale)) => {
                    let wc = &weight[c * chunk..(c + 1) * chunk];
                    for ((y, &x), &w) in y.iter_mut().zip(xc).zip(wc) {
                        *y = x * scale * w;
                    }
                }
                None => y.copy_from_slice(xc),
            }
            let b0 = c * chunk / BLOCK;
            for (i, yb) in y.chunks_exact(BLOCK).enumerate() {
                let b = b0 + i;
                let quants: &mut [i8; BLOCK] = (&mut q[b * BLOCK..(b + 1) * BLOCK])
                    .try_into()
                    .expect("whole block");
                (d[b], s[b]) = quantize_block(isa, yb.try_into().expect("whole block"), quants);
            }
            if self.super_form {
                let ns = self.k / SUPER;
                let kq = self
                    .kq
                    .slice(r * self.k + c * SUPER..r * self.k + (c + 1) * SUPER);
                let ksum = self.ksum.slice(r * nb + b0..r * nb + b0 + SUPER / BLOCK);
                let halves = 2 * (r * nb + b0)..2 * (r * nb + b0 + SUPER / BLOCK);
                let ksum16 = self.ksum16.slice(halves);
                let kd = &mut self.kd.slice(r * ns + c..r * ns + c + 1)[0];
                let y = (&*y).try_into().expect("a super-block");
                *kd = quantize_super(isa, y, kq, (ksum, ksum16));
            }
        }
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

/// The integer sums of a super-block's quants per block of 32 and per half block of 16.
type Sums<'a> = (&'a mut [i16], &'a mut [i16]);

/// Quantizes one super-block on one scale: writes the quants and their integer sums per block
/// and half block, returns the scale `max|x| / 127`. The same rounding as the blocks' (half to
/// even).
fn quantize_super(isa: Isa, x: &[f32; SUPER], q: &mut [i8], sums: Sums<'_>) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::detect` chose AVX2 or better only where the CPU has AVX2.
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { quantize_super_avx2(x, q, sums) },
        _ => quantize_super_portable(x, q, sums),
    }
}

/// The super-block quantization in plain Rust (vectorized by the compiler where AVX2 is on:
/// the operations are exact or correctly rounded, so every build gives the same bytes).
#[inline(always)]
fn quantize_super_portable(x: &[f32; SUPER], q: &mut [i8], (sums, halves): Sums<'_>) -> f32 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for ((qh, xh), half) in q
        .chunks_exact_mut(BLOCK / 2)
        .zip(x.chunks_exact(BLOCK / 2))
        .zip(halves.iter_mut())
    {
        let mut total = 0i32;
        for (q, &v) in qh.iter_mut().zip(xh) {
            let r = (v * id).round_ties_even() as i32;
            *q = r as i8;
            total += r;
        }
        // At most 16 * 127 in magnitude.
        *half = total as i16;
    }
    for (sum, pair) in sums.iter_mut().zip(halves.chunks_exact(2)) {
        *sum = pair[0] + pair[1];
    }
    amax / 127.0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_super_avx2(x: &[f32; SUPER], q: &mut [i8], sums: Sums<'_>) -> f32 {
    quantize_super_portable(x, q, sums)
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

    /// Rows of `x` (`k` values each) quantized with `isa`, optionally normed.
    fn quantized(isa: Isa, x: &[f32], k: usize, norm: Option<&[f32]>) -> QuantizedRows {
        let mut rows = QuantizedRows::with_forms(k, k.is_multiple_of(SUPER));
        rows.reset(x.len() / k);
        let writer = rows.writer();
        for (r, xr) in x.chunks_exact(k).enumerate() {
            // SAFETY: one thread writes every row.
            unsafe {
                match norm {
                    Some(w) => writer.rms_norm_quantize(isa, r, xr, w, 1e-5),
                    None => writer.quantize(isa, r, xr),
                }
            }
        }
        rows
    }

    /// A row's two forms, owned: `(q, d, s, kq, kd, ksum, ksum16)`.
    type Forms = (
        Vec<i8>,
        Vec<f32>,
        Vec<f32>,
        Vec<i8>,
        Vec<f32>,
        Vec<i16>,
        Vec<i16>,
    );

    fn forms(rows: &QuantizedRows) -> Vec<Forms> {
        (0..rows.rows())
            .map(|r| {
                let (row, sup) = (rows.row(r), rows.super_row(r));
                (
                    row.q.to_vec(),
                    row.d.to_vec(),
                    row.s.to_vec(),
                    sup.kq.to_vec(),
                    sup.kd.to_vec(),
                    sup.ksum.to_vec(),
                    sup.ksum16.to_vec(),
                )
            })
            .collect()
    }

    #[test]
    fn quantization_error_is_within_half_a_step() {
        let k = 512;
        let mut x = random(2 * k, 3);
        // A loud value in one block: the super-block's scale follows it.
        x[300] = 9.0;
        let rows = quantized(Isa::detect(), &x, k, None);
        for r in 0..2 {
            let (row, sup) = (rows.row(r), rows.super_row(r));
            let xr = &x[r * k..(r + 1) * k];
            for (b, block) in xr.chunks_exact(BLOCK).enumerate() {
                let q = &row.q[b * BLOCK..(b + 1) * BLOCK];
                let sum: i32 = q.iter().map(|&v| v as i32).sum();
                assert!((row.s[b] - row.d[b] * sum as f32).abs() <= 1e-6 * row.s[b].abs().max(1.0));
                let kq = &sup.kq[b * BLOCK..(b + 1) * BLOCK];
                let ksum: i32 = kq.iter().map(|&v| v as i32).sum();
                assert_eq!(ksum, sup.ksum[b] as i32);
                let first: i32 = kq[..16].iter().map(|&v| v as i32).sum();
                assert_eq!(first, sup.ksum16[2 * b] as i32);
                let kd = sup.kd[b * BLOCK / SUPER];
                for (i, &v) in block.iter().enumerate() {
                    let back = q[i] as f32 * row.d[b];
                    assert!((back - v).abs() <= row.d[b] * 0.5 + 1e-7, "{v} -> {back}");
                    let back = kq[i] as f32 * kd;
                    assert!((back - v).abs() <= kd * 0.5 + 1e-6, "{v} -> {back}");
                }
            }
        }
        assert_eq!(rows.super_row(0).kd[1], 9.0 / 127.0);
        // Rows that are not whole super-blocks keep the block form only.
        let mut rows = QuantizedRows::new(k);
        rows.reset(1);
        // SAFETY: one thread writes the row.
        unsafe { rows.writer().quantize(Isa::detect(), 0, &x[..k]) };
        assert!(rows.super_row(0).kq.is_empty() && rows.row(0).q.len() == k);
    }

    #[test]
    fn every_kernel_family_writes_the_same_rows() {
        let k = 768;
        let mut x = random(3 * k, 9);
        for v in &mut x[k..k + SUPER] {
            *v = 0.0;
        }
        let w = random(k, 10);
        for norm in [None, Some(&w[..])] {
            let reference = forms(&quantized(Isa::Portable, &x, k, norm));
            for isa in Isa::all_supported() {
                assert_eq!(forms(&quantized(isa, &x, k, norm)), reference, "{isa:?}");
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
        let fused = quantized(isa, &x, 576, Some(&w));
        let apart = quantized(isa, &normed, 576, None);
        assert_eq!(forms(&fused), forms(&apart));
    }
}

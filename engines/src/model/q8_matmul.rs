//! A Q8_0 × Q8_0 matrix product for the batched step, replacing candle's CPU path for Q8_0
//! weights whose inner size is not a multiple of 256.
//!
//! Why: candle 0.11's repacked x86 kernels need `k % 256 == 0`; SmolLM2's hidden size is 576, so
//! its projections fall back to one `vec_dot` call per (row, column) pair, which profiles at 70%
//! of a batched step and gains almost nothing from batching. Here weights are kept as int8 quants
//! plus f32 block scales, each activation row is quantized once, and a tile of four weight rows
//! stays in L1 while every activation row of the step passes over it.
//!
//! Determinism: each output element is computed by the same instruction sequence whatever the
//! batch size or tile, so a sequence's logits do not depend on what else is in the batch (the
//! request core's greedy parity with solo runs rests on this).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};

/// Values per Q8_0 block.
const BLOCK: usize = 32;
/// Bytes of one GGML Q8_0 block: an f16 scale, then 32 int8 quants.
const GGML_BLOCK_BYTES: usize = 34;
/// Weight rows per tile.
const TILE: usize = 4;

/// A `[n, k]` Q8_0 weight matrix in the layout the kernel reads: tiles of four rows, and inside
/// a tile block `b` of its four rows side by side (`quants[(tile * blocks + b) * 4 + r]` holds 32
/// int8, `scales` the matching f32), so a tile is one sequential stream.
pub struct Q8Matrix {
    n: usize,
    k: usize,
    quants: Vec<i8>,
    scales: Vec<f32>,
}

impl Q8Matrix {
    /// Converts a Q8_0 tensor of shape `[n, k]`; `None` if the kernel cannot serve it.
    pub fn from_qtensor(tensor: &QTensor) -> Result<Option<Self>> {
        let dims = tensor.shape().dims();
        let (n, k) = match dims {
            [n, k] => (*n, *k),
            _ => return Ok(None),
        };
        if tensor.dtype() != GgmlDType::Q8_0
            || k % BLOCK != 0
            || n % TILE != 0
            || !kernel_available()
        {
            return Ok(None);
        }
        let data = tensor.data()?;
        let blocks = n * k / BLOCK;
        if data.len() != blocks * GGML_BLOCK_BYTES {
            candle_core::bail!(
                "Q8_0 tensor has {} bytes, expected {}",
                data.len(),
                blocks * GGML_BLOCK_BYTES
            );
        }
        let nb = k / BLOCK;
        let mut quants = vec![0i8; n * k];
        let mut scales = vec![0f32; blocks];
        for (i, block) in data.chunks_exact(GGML_BLOCK_BYTES).enumerate() {
            let (row, b) = (i / nb, i % nb);
            let at = ((row / TILE) * nb + b) * TILE + row % TILE;
            scales[at] = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
            for (q, &byte) in quants[at * BLOCK..(at + 1) * BLOCK]
                .iter_mut()
                .zip(&block[2..])
            {
                *q = byte as i8;
            }
        }
        Ok(Some(Self {
            n,
            k,
            quants,
            scales,
        }))
    }

    /// `x [m, k] -> [m, n]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            candle_core::bail!("q8 matmul: input has {k} columns, weights {}", self.k);
        }
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let (xq, xd) = quantize_rows(&xs, m, k);
        let nb = k / BLOCK;
        // Output computed transposed, `[n, m]`, so each tile owns a contiguous slice. The work
        // runs on candle's own spinning pool, the one its other CPU kernels use: a second pool
        // (rayon's) would fight it for the same cores between consecutive ops.
        let mut out_t = vec![0f32; self.n * m];
        let out_addr = out_t.as_mut_ptr() as usize;
        candle_core::utils::barrier_pool().execute_chunked(self.n / TILE, |tiles| {
            for tile in tiles {
                // SAFETY: tile `t` writes only `out_t[t * TILE * m .. (t + 1) * TILE * m]`, and
                // `out_t` outlives the call, which returns only when every item is done.
                let chunk = unsafe {
                    std::slice::from_raw_parts_mut(
                        (out_addr as *mut f32).add(tile * TILE * m),
                        TILE * m,
                    )
                };
                let w = &self.quants[tile * TILE * k..(tile + 1) * TILE * k];
                let wd = &self.scales[tile * TILE * nb..(tile + 1) * TILE * nb];
                let row = |i: usize| (&xq[i * k..(i + 1) * k], &xd[i * nb..(i + 1) * nb]);
                // Rows in pairs (each weight block loaded once for two rows), then the last one.
                let mut i = 0;
                while i + 1 < m {
                    let [a, b] = dot_2x4(row(i), row(i + 1), w, wd);
                    for r in 0..TILE {
                        chunk[r * m + i] = a[r];
                        chunk[r * m + i + 1] = b[r];
                    }
                    i += 2;
                }
                if i < m {
                    let (x, d) = row(i);
                    let dots = dot_1x4(x, d, w, wd);
                    for (r, dot) in dots.into_iter().enumerate() {
                        chunk[r * m + i] = dot;
                    }
                }
            }
        });
        let device: &Device = x.device();
        let out = Tensor::from_vec(out_t, (self.n, m), device)?;
        if m == 1 {
            // `[n, 1]` and `[1, n]` share a layout: no transposing copy for a single row.
            out.reshape((1, self.n))
        } else {
            out.t()?.contiguous()
        }
    }
}

/// Q8_0 quantization of each row: per block of 32, scale = max|x| / 127, quants rounded.
fn quantize_rows(xs: &[f32], m: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    let mut quants = vec![0i8; m * k];
    let mut scales = vec![0f32; m * k / BLOCK];
    for ((block, q), d) in xs
        .chunks_exact(BLOCK)
        .zip(quants.chunks_exact_mut(BLOCK))
        .zip(&mut scales)
    {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        *d = amax / 127.0;
        let inv = if *d > 0.0 { 1.0 / *d } else { 0.0 };
        for (q, v) in q.iter_mut().zip(block) {
            *q = (v * inv).round() as i8;
        }
    }
    (quants, scales)
}

fn kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Four dot products of one quantized activation row against one interleaved tile.
fn dot_1x4(xq: &[i8], xd: &[f32], w: &[i8], wd: &[f32]) -> [f32; TILE] {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `from_qtensor` only builds a matrix when AVX2 and FMA were detected, and the
        // slices hold `xd.len()` whole blocks each.
        unsafe { dot_1x4_avx2(xq, xd, w, wd) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (xq, xd, w, wd);
        unreachable!("Q8Matrix is only built where the kernel is available")
    }
}

/// `dot_1x4` for two rows at once; each result is bit-identical to `dot_1x4`'s.
fn dot_2x4(x0: (&[i8], &[f32]), x1: (&[i8], &[f32]), w: &[i8], wd: &[f32]) -> [[f32; TILE]; 2] {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: as for `dot_1x4`.
        unsafe { dot_2x4_avx2(x0, x1, w, wd) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x0, x1, w, wd);
        unreachable!("Q8Matrix is only built where the kernel is available")
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_2x4_avx2(
    (x0q, x0d): (&[i8], &[f32]),
    (x1q, x1d): (&[i8], &[f32]),
    w: &[i8],
    wd: &[f32],
) -> [[f32; TILE]; 2] {
    use std::arch::x86_64::*;
    let blocks = x0d.len();
    debug_assert!(
        x1d.len() == blocks && w.len() == TILE * blocks * BLOCK && wd.len() == TILE * blocks
    );
    let ones = _mm256_set1_epi16(1);
    let mut acc0 = [_mm256_setzero_ps(); TILE];
    let mut acc1 = [_mm256_setzero_ps(); TILE];
    let (w, wd) = (w.as_ptr(), wd.as_ptr());
    for b in 0..blocks {
        let x0 = _mm256_loadu_si256(x0q.as_ptr().add(b * BLOCK) as *const __m256i);
        let x1 = _mm256_loadu_si256(x1q.as_ptr().add(b * BLOCK) as *const __m256i);
        let (ax0, ax1) = (_mm256_sign_epi8(x0, x0), _mm256_sign_epi8(x1, x1));
        let (s0, s1) = (*x0d.get_unchecked(b), *x1d.get_unchecked(b));
        for r in 0..TILE {
            let at = b * TILE + r;
            let wv = _mm256_loadu_si256(w.add(at * BLOCK) as *const __m256i);
            let scale = *wd.add(at);
            let p0 = _mm256_maddubs_epi16(ax0, _mm256_sign_epi8(wv, x0));
            let p0 = _mm256_cvtepi32_ps(_mm256_madd_epi16(p0, ones));
            acc0[r] = _mm256_fmadd_ps(_mm256_set1_ps(s0 * scale), p0, acc0[r]);
            let p1 = _mm256_maddubs_epi16(ax1, _mm256_sign_epi8(wv, x1));
            let p1 = _mm256_cvtepi32_ps(_mm256_madd_epi16(p1, ones));
            acc1[r] = _mm256_fmadd_ps(_mm256_set1_ps(s1 * scale), p1, acc1[r]);
        }
    }
    [
        std::array::from_fn(|r| hsum(acc0[r])),
        std::array::from_fn(|r| hsum(acc1[r])),
    ]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_1x4_avx2(xq: &[i8], xd: &[f32], w: &[i8], wd: &[f32]) -> [f32; TILE] {
    use std::arch::x86_64::*;
    let blocks = xd.len();
    debug_assert!(
        xq.len() == blocks * BLOCK && w.len() == TILE * blocks * BLOCK && wd.len() == TILE * blocks
    );
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); TILE];
    let (w, wd) = (w.as_ptr(), wd.as_ptr());
    for b in 0..blocks {
        let x = _mm256_loadu_si256(xq.as_ptr().add(b * BLOCK) as *const __m256i);
        // |x| as unsigned bytes, and each weight carrying x's sign: maddubs multiplies an
        // unsigned by a signed operand (quants are within ±127, so pairs cannot saturate).
        let ax = _mm256_sign_epi8(x, x);
        let xs = *xd.get_unchecked(b);
        for (r, acc) in acc.iter_mut().enumerate() {
            let at = b * TILE + r;
            let wv = _mm256_loadu_si256(w.add(at * BLOCK) as *const __m256i);
            let products = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, x));
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones));
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(xs * *wd.add(at)), sums, *acc);
        }
    }
    std::array::from_fn(|r| hsum(acc[r]))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        // A small LCG: deterministic, no dependency.
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

    fn setup(n: usize, k: usize) -> (Q8Matrix, QTensor, Tensor) {
        let w = Tensor::from_vec(random(n * k, 1), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let matrix = Q8Matrix::from_qtensor(&q)
            .unwrap()
            .expect("kernel available on x86-64-v3");
        (matrix, q, w)
    }

    #[test]
    fn at_least_as_accurate_as_candles_q8_0_matmul() {
        let (n, k, m) = (64, 576, 5);
        let (matrix, q, _) = setup(n, k);
        let x = Tensor::from_vec(random(m * k, 2), (m, k), &Device::Cpu).unwrap();
        // The exact product with the weights as stored.
        let exact = x
            .matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap())
            .unwrap();
        let max_error = |t: Tensor| -> f32 {
            (t - &exact)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let ours = matrix.forward(&x).unwrap();
        assert_eq!(ours.dims(), &[m, n]);
        let candle = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
        let theirs = candle_core::Module::forward(&candle, &x).unwrap();
        let (ours, theirs) = (max_error(ours), max_error(theirs));
        // Activations are quantized with f32 scales here, f16 in candle.
        assert!(ours <= theirs * 1.05, "ours {ours} vs candle {theirs}");
        let scale = exact
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            ours < 0.02 * scale,
            "error {ours} against outputs up to {scale}"
        );
    }

    #[test]
    fn a_row_does_not_depend_on_the_rest_of_the_batch() {
        // Model-sized shapes (SmolLM2: hidden 576, MLP 1536), odd and even batch sizes.
        for (n, k) in [(32, 192), (192, 576), (1536, 576), (576, 1536)] {
            let (matrix, _, _) = setup(n, k);
            for m in [2, 7, 13] {
                let rows = Tensor::from_vec(random(m * k, 3), (m, k), &Device::Cpu).unwrap();
                let batched = matrix.forward(&rows).unwrap().to_vec2::<f32>().unwrap();
                for (i, batched_row) in batched.iter().enumerate() {
                    let alone = matrix.forward(&rows.narrow(0, i, 1).unwrap()).unwrap();
                    let alone = alone.to_vec2::<f32>().unwrap();
                    assert_eq!(&alone[0], batched_row, "({n}, {k}) m={m} row {i}");
                }
            }
        }
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        let w = Tensor::zeros((6, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        assert!(
            Q8Matrix::from_qtensor(&q).unwrap().is_none(),
            "rows not a multiple of 4"
        );
        let q = QTensor::quantize(
            &Tensor::zeros((4, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::Q4_0,
        )
        .unwrap();
        assert!(Q8Matrix::from_qtensor(&q).unwrap().is_none(), "not Q8_0");
    }
}

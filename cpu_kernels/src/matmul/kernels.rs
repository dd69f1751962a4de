//! The microkernels: one weight tile (four outputs) against one to four activation rows.
//!
//! Every family computes, for each (row, output) pair, eight lane sums per block (lane `l`
//! covers elements `4l..4l+4`), accumulates `lane * (d_w * d_x)` with a fused multiply-add per
//! block, reduces the lanes as `((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7))`, then adds the 4-bit
//! offsets' term `sum_b m_b * s_b` (a fused multiply-add chain). Keeping that order in each
//! family (the portable one emulates the lanes) makes them bit-identical, which the tests check.

use super::{Q4Tile, SUPER_BLOCK, TILE};
use crate::isa::Isa;
use crate::quant::{QuantizedRows, BLOCK};

/// Runs a microkernel over `rows`: groups of `R` rows while they last, then single rows.
fn in_groups<const R: usize>(
    rows: std::ops::Range<usize>,
    group: impl Fn(usize) -> [[f32; TILE]; R],
    single: impl Fn(usize) -> [f32; TILE],
    store: &mut impl FnMut(usize, [f32; TILE]),
) {
    let mut r = rows.start;
    while r + R <= rows.end {
        for (i, values) in group(r).into_iter().enumerate() {
            store(r + i, values);
        }
        r += R;
    }
    for r in r..rows.end {
        store(r, single(r));
    }
}

/// The outputs of a 4-bit tile for every row in `rows`, handed to `store(row, values)`.
pub(super) fn q4_rows(
    isa: Isa,
    w: Q4Tile<'_>,
    d: &[f32],
    m: &[f32],
    x: &QuantizedRows,
    rows: std::ops::Range<usize>,
    mut store: impl FnMut(usize, [f32; TILE]),
) {
    // SAFETY (every `unsafe` below): `Isa::detect` picks a family only where the CPU has its
    // features; the tile and the rows hold `d.len() / TILE` whole blocks.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => in_groups::<4>(
            rows,
            |r| unsafe {
                match w {
                    Q4Tile::Packed(p) => x86::q4_vnni::<4, true>(p, d, m, x, r),
                    Q4Tile::Unpacked(u) => x86::q4_vnni::<4, false>(u, d, m, x, r),
                }
            },
            |r| unsafe {
                match w {
                    Q4Tile::Packed(p) => x86::q4_vnni::<1, true>(p, d, m, x, r)[0],
                    Q4Tile::Unpacked(u) => x86::q4_vnni::<1, false>(u, d, m, x, r)[0],
                }
            },
            &mut store,
        ),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => in_groups::<2>(
            rows,
            |r| unsafe {
                match w {
                    Q4Tile::Packed(p) => x86::q4_avx2::<2, true>(p, d, m, x, r),
                    Q4Tile::Unpacked(u) => x86::q4_avx2::<2, false>(u, d, m, x, r),
                }
            },
            |r| unsafe {
                match w {
                    Q4Tile::Packed(p) => x86::q4_avx2::<1, true>(p, d, m, x, r)[0],
                    Q4Tile::Unpacked(u) => x86::q4_avx2::<1, false>(u, d, m, x, r)[0],
                }
            },
            &mut store,
        ),
        _ => in_groups::<1>(
            rows,
            |r| [portable::q4(w, d, m, x, r)],
            |r| portable::q4(w, d, m, x, r),
            &mut store,
        ),
    }
}

/// A Q4_K tile's 6-bit scales and mins per block (`[blocks][TILE]`).
#[derive(Clone, Copy)]
pub(super) struct KScales<'a> {
    /// Scales.
    pub scales: &'a [u8],
    /// Mins.
    pub mins: &'a [u8],
}

/// The outputs of a Q4_K tile (packed nibble pairs; `d`, `dmin`: `[super-blocks][TILE]`)
/// against the rows' super-block form, for every row in `rows`.
///
/// Per super-block and output, each block's lane sums are multiplied by the block's 6-bit
/// scale and added in integers (exact), converted to f32 once and accumulated with a fused
/// multiply-add by `d * d_x`; the mins' term `sum_j m_j * ksum_j` likewise, by `-(dmin * d_x)`.
/// Every family computes the same integers and the same float operations in the same order.
#[allow(clippy::too_many_arguments)]
pub(super) fn q4k_rows(
    isa: Isa,
    w: &[u8],
    d: &[f32],
    dmin: &[f32],
    k: KScales<'_>,
    x: &QuantizedRows,
    rows: std::ops::Range<usize>,
    mut store: impl FnMut(usize, [f32; TILE]),
) {
    // SAFETY: as in `q4_rows`; `k` holds a scale and a min per block and output, and the rows
    // have their super-block form (their length is the matrix's, whole super-blocks).
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => in_groups::<4>(
            rows,
            |r| unsafe { x86::q4k_vnni::<4>(w, d, dmin, k, x, r) },
            |r| unsafe { x86::q4k_vnni::<1>(w, d, dmin, k, x, r)[0] },
            &mut store,
        ),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => in_groups::<2>(
            rows,
            |r| unsafe { x86::q4k_avx2::<2>(w, d, dmin, k, x, r) },
            |r| unsafe { x86::q4k_avx2::<1>(w, d, dmin, k, x, r)[0] },
            &mut store,
        ),
        _ => in_groups::<1>(
            rows,
            |r| [portable::q4k(w, d, dmin, k, x, r)],
            |r| portable::q4k(w, d, dmin, k, x, r),
            &mut store,
        ),
    }
}

/// Blocks per super-block.
const BLOCKS_PER_SUPER: usize = SUPER_BLOCK / BLOCK;

/// The outputs of an 8-bit tile for every row in `rows`, handed to `store(row, values)`.
pub(super) fn q8_rows(
    isa: Isa,
    w: &[i8],
    d: &[f32],
    x: &QuantizedRows,
    rows: std::ops::Range<usize>,
    mut store: impl FnMut(usize, [f32; TILE]),
) {
    // SAFETY: as in `q4_rows`.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => in_groups::<4>(
            rows,
            |r| unsafe { x86::q8_vnni::<4>(w, d, x, r) },
            |r| unsafe { x86::q8_vnni::<1>(w, d, x, r)[0] },
            &mut store,
        ),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => in_groups::<2>(
            rows,
            |r| unsafe { x86::q8_avx2::<2>(w, d, x, r) },
            |r| unsafe { x86::q8_avx2::<1>(w, d, x, r)[0] },
            &mut store,
        ),
        _ => in_groups::<1>(
            rows,
            |r| [portable::q8(w, d, x, r)],
            |r| portable::q8(w, d, x, r),
            &mut store,
        ),
    }
}

/// A Q6_K tile as stored: two nibble pairs and a plane of high bit pairs per block, a signed
/// scale per half block (`[blocks][TILE][2]`) and `d` per super-block (`[super-blocks][TILE]`).
#[derive(Clone, Copy)]
pub(super) struct Q6Tile<'a> {
    /// `[blocks][TILE / 2][32]` bytes, as a 4-bit tile's.
    pub pairs: &'a [u8],
    /// `[blocks][32]` bytes: element `e`'s two high bits of output `c` at bits `2c, 2c + 1`.
    pub plane: &'a [u8],
    /// `[blocks][TILE][2]` scales.
    pub scales: &'a [i8],
    /// `[super-blocks][TILE]` scales of the scales.
    pub d: &'a [f32],
}

/// The outputs of a Q6_K tile against the rows' super-block form, for every row in `rows`.
///
/// The 6-bit quants `q` (0..64) are rebuilt in registers and multiplied unsigned by the
/// activations; each half block's lane sums times its signed scale are added in integers per
/// super-block, and the `- 32` of `w = d * sc * (q - 32)` is one integer term per super-block,
/// `32 * sum_h sc_h * ksum16_h`. Both are converted once per super-block and accumulated by
/// `d * d_x` as Q4_K's are: every family computes the same integers and floats in one order.
pub(super) fn q6k_rows(
    isa: Isa,
    w: Q6Tile<'_>,
    x: &QuantizedRows,
    rows: std::ops::Range<usize>,
    mut store: impl FnMut(usize, [f32; TILE]),
) {
    // SAFETY: as in `q4_rows`; the tile holds `w.d.len() / TILE` whole super-blocks and the
    // rows have their super-block form.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => in_groups::<4>(
            rows,
            |r| unsafe { x86::q6k_vnni::<4>(w, x, r) },
            |r| unsafe { x86::q6k_vnni::<1>(w, x, r)[0] },
            &mut store,
        ),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => in_groups::<2>(
            rows,
            |r| unsafe { x86::q6k_avx2::<2>(w, x, r) },
            |r| unsafe { x86::q6k_avx2::<1>(w, x, r)[0] },
            &mut store,
        ),
        _ => in_groups::<1>(
            rows,
            |r| [portable::q6k(w, x, r)],
            |r| portable::q6k(w, x, r),
            &mut store,
        ),
    }
}

/// Plain Rust, lane for lane what the SIMD kernels do.
mod portable {
    use super::*;

    /// `((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7))`, the SIMD kernels' reduction.
    fn reduce(l: &[f32; 8]) -> f32 {
        ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
    }

    pub(super) fn q4(w: Q4Tile<'_>, d: &[f32], m: &[f32], x: &QuantizedRows, r: usize) -> [f32; 4] {
        let nb = d.len() / TILE;
        let row = x.row(r);
        let mut acc = [[0f32; 8]; TILE];
        let mut weights = [0u8; BLOCK];
        for b in 0..nb {
            let xb = &row.q[b * BLOCK..(b + 1) * BLOCK];
            for (c, acc) in acc.iter_mut().enumerate() {
                let at = b * TILE + c;
                match w {
                    Q4Tile::Packed(p) => {
                        let pair = (b * TILE + c) / 2;
                        let shift = if c % 2 == 1 { 4 } else { 0 };
                        for (w, &byte) in weights.iter_mut().zip(&p[pair * 32..(pair + 1) * 32]) {
                            *w = (byte >> shift) & 0x0f;
                        }
                    }
                    Q4Tile::Unpacked(u) => weights.copy_from_slice(&u[at * 32..(at + 1) * 32]),
                }
                let scale = d[at] * row.d[b];
                for (l, lane) in acc.iter_mut().enumerate() {
                    let sum: i32 = (4 * l..4 * l + 4)
                        .map(|e| weights[e] as i32 * xb[e] as i32)
                        .sum();
                    *lane = (sum as f32).mul_add(scale, *lane);
                }
            }
        }
        let mut out = [0f32; TILE];
        for (c, o) in out.iter_mut().enumerate() {
            let mut offsets = 0f32;
            for b in 0..nb {
                offsets = m[b * TILE + c].mul_add(row.s[b], offsets);
            }
            *o = reduce(&acc[c]) + offsets;
        }
        out
    }

    pub(super) fn q4k(
        w: &[u8],
        d: &[f32],
        dmin: &[f32],
        k: KScales<'_>,
        x: &QuantizedRows,
        r: usize,
    ) -> [f32; 4] {
        let row = x.super_row(r);
        let mut acc = [[0f32; 8]; TILE];
        let mut offsets = [0f32; TILE];
        for s in 0..d.len() / TILE {
            let mut sums = [[0i32; 8]; TILE];
            let mut mins = [0i32; TILE];
            for j in 0..BLOCKS_PER_SUPER {
                let b = s * BLOCKS_PER_SUPER + j;
                let xb = &row.kq[b * BLOCK..(b + 1) * BLOCK];
                for c in 0..TILE {
                    let pair = &w[(b * TILE / 2 + c / 2) * BLOCK..][..BLOCK];
                    let shift = if c % 2 == 1 { 4 } else { 0 };
                    let scale = k.scales[b * TILE + c] as i32;
                    for (l, sum) in sums[c].iter_mut().enumerate() {
                        let dot: i32 = (4 * l..4 * l + 4)
                            .map(|e| ((pair[e] >> shift) & 0x0f) as i32 * xb[e] as i32)
                            .sum();
                        *sum += scale * dot;
                    }
                    mins[c] += k.mins[b * TILE + c] as i32 * row.ksum[b] as i32;
                }
            }
            let dx = row.kd[s];
            for c in 0..TILE {
                let scale = d[s * TILE + c] * dx;
                for (lane, &sum) in acc[c].iter_mut().zip(&sums[c]) {
                    *lane = (sum as f32).mul_add(scale, *lane);
                }
                offsets[c] = (mins[c] as f32).mul_add(-(dmin[s * TILE + c] * dx), offsets[c]);
            }
        }
        std::array::from_fn(|c| reduce(&acc[c]) + offsets[c])
    }

    pub(super) fn q8(w: &[i8], d: &[f32], x: &QuantizedRows, r: usize) -> [f32; 4] {
        let nb = d.len() / TILE;
        let row = x.row(r);
        let mut acc = [[0f32; 8]; TILE];
        for b in 0..nb {
            let xb = &row.q[b * BLOCK..(b + 1) * BLOCK];
            for (c, acc) in acc.iter_mut().enumerate() {
                let at = b * TILE + c;
                let wb = &w[at * BLOCK..(at + 1) * BLOCK];
                let scale = d[at] * row.d[b];
                for (l, lane) in acc.iter_mut().enumerate() {
                    let sum: i32 = (4 * l..4 * l + 4)
                        .map(|e| wb[e] as i32 * xb[e] as i32)
                        .sum();
                    *lane = (sum as f32).mul_add(scale, *lane);
                }
            }
        }
        std::array::from_fn(|c| reduce(&acc[c]))
    }

    pub(super) fn q6k(w: Q6Tile<'_>, x: &QuantizedRows, r: usize) -> [f32; 4] {
        let row = x.super_row(r);
        let mut acc = [[0f32; 8]; TILE];
        let mut offsets = [0f32; TILE];
        for s in 0..w.d.len() / TILE {
            let mut sums = [[0i32; 8]; TILE];
            let mut halves = [0i32; TILE];
            for j in 0..BLOCKS_PER_SUPER {
                let b = s * BLOCKS_PER_SUPER + j;
                let xb = &row.kq[b * BLOCK..(b + 1) * BLOCK];
                let plane = &w.plane[b * BLOCK..(b + 1) * BLOCK];
                for c in 0..TILE {
                    let pair = &w.pairs[(b * TILE / 2 + c / 2) * BLOCK..][..BLOCK];
                    let shift = if c % 2 == 1 { 4 } else { 0 };
                    let scales = &w.scales[(b * TILE + c) * 2..][..2];
                    for (l, sum) in sums[c].iter_mut().enumerate() {
                        let dot: i32 = (4 * l..4 * l + 4)
                            .map(|e| {
                                let low = (pair[e] >> shift) & 0x0f;
                                let q = low | (((plane[e] >> (2 * c)) & 3) << 4);
                                q as i32 * xb[e] as i32
                            })
                            .sum();
                        *sum += scales[l / 4] as i32 * dot;
                    }
                    for (h, &scale) in scales.iter().enumerate() {
                        halves[c] += scale as i32 * row.ksum16[2 * b + h] as i32;
                    }
                }
            }
            let dx = row.kd[s];
            for c in 0..TILE {
                let scale = w.d[s * TILE + c] * dx;
                for (lane, &sum) in acc[c].iter_mut().zip(&sums[c]) {
                    *lane = (sum as f32).mul_add(scale, *lane);
                }
                offsets[c] = ((halves[c] << 5) as f32).mul_add(-scale, offsets[c]);
            }
        }
        std::array::from_fn(|c| reduce(&acc[c]) + offsets[c])
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Four 8-lane accumulators reduced to their four sums, in the documented order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn reduce4(a: &[__m256; TILE]) -> __m128 {
        let t0 = _mm256_hadd_ps(a[0], a[1]);
        let t1 = _mm256_hadd_ps(a[2], a[3]);
        let t = _mm256_hadd_ps(t0, t1);
        _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1))
    }

    /// Lane sums of unsigned-by-signed byte products, AVX2: `maddubs` then `madd` by ones.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_avx2(unsigned: __m256i, signed: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(unsigned, signed), _mm256_set1_epi16(1))
    }

    /// The same lane sums in one VNNI instruction.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
    unsafe fn dot_vnni(unsigned: __m256i, signed: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), unsigned, signed)
    }

    macro_rules! q4_kernel {
        ($name:ident, $features:literal, $dot:ident) => {
            /// One 4-bit tile against `R` rows from `r0`; `PACKED` reads nibbles, else bytes.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<const R: usize, const PACKED: bool>(
                w: &[u8],
                d: &[f32],
                m: &[f32],
                x: &QuantizedRows,
                r0: usize,
            ) -> [[f32; TILE]; R] {
                let nb = d.len() / TILE;
                let low = _mm256_set1_epi8(0x0f);
                let mut acc = [[_mm256_setzero_ps(); TILE]; R];
                let mut xq = [std::ptr::null::<i8>(); R];
                let mut xd = [std::ptr::null::<f32>(); R];
                for r in 0..R {
                    let row = x.row(r0 + r);
                    xq[r] = row.q.as_ptr();
                    xd[r] = row.d.as_ptr();
                }
                let (wp, dp) = (w.as_ptr(), d.as_ptr());
                for b in 0..nb {
                    let mut xv = [_mm256_setzero_si256(); R];
                    let mut dx = [_mm256_setzero_ps(); R];
                    for r in 0..R {
                        xv[r] = _mm256_loadu_si256(xq[r].add(b * BLOCK) as *const __m256i);
                        dx[r] = _mm256_broadcast_ss(&*xd[r].add(b));
                    }
                    let mut pair = _mm256_setzero_si256();
                    for c in 0..TILE {
                        let at = b * TILE + c;
                        let wv = if PACKED {
                            // One load serves two outputs: low nibbles, then high ones.
                            if c % 2 == 0 {
                                pair = _mm256_loadu_si256(wp.add(at * 16) as *const __m256i);
                                _mm256_and_si256(pair, low)
                            } else {
                                _mm256_and_si256(_mm256_srli_epi16(pair, 4), low)
                            }
                        } else {
                            _mm256_loadu_si256(wp.add(at * 32) as *const __m256i)
                        };
                        let dw = _mm256_broadcast_ss(&*dp.add(at));
                        for r in 0..R {
                            let sums = _mm256_cvtepi32_ps($dot(wv, xv[r]));
                            let scale = _mm256_mul_ps(dw, dx[r]);
                            acc[r][c] = _mm256_fmadd_ps(sums, scale, acc[r][c]);
                        }
                    }
                }
                let mut out = [[0f32; TILE]; R];
                for r in 0..R {
                    let s = x.row(r0 + r).s;
                    let mut offsets = _mm_setzero_ps();
                    for b in 0..nb {
                        let m4 = _mm_loadu_ps(m.as_ptr().add(b * TILE));
                        offsets = _mm_fmadd_ps(m4, _mm_set1_ps(s[b]), offsets);
                    }
                    _mm_storeu_ps(out[r].as_mut_ptr(), _mm_add_ps(reduce4(&acc[r]), offsets));
                }
                out
            }
        };
    }

    /// A super-block's integer lane sums of four outputs (ymm, one per output) converted and
    /// accumulated by `d * d_x` per output (`scale4`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn accumulate_ymm(acc: &mut [__m256; TILE], sums: &[__m256i; TILE], scale4: __m128) {
        let mut scales = [0f32; TILE];
        _mm_storeu_ps(scales.as_mut_ptr(), scale4);
        for c in 0..TILE {
            let sums = _mm256_cvtepi32_ps(sums[c]);
            acc[c] = _mm256_fmadd_ps(sums, _mm256_set1_ps(scales[c]), acc[c]);
        }
    }

    /// The same for zmm sums holding outputs 0 | 2 and 1 | 3 side by side.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f")]
    unsafe fn accumulate_zmm(acc: &mut [__m512; 2], sums: &[__m512i; 2], scale4: __m128) {
        // f32 lanes 0-7 take output 0's `d * d_x`, 8-15 output 2's (and 1, 3).
        let pick: [[i32; 16]; 2] =
            std::array::from_fn(|h| std::array::from_fn(|i| (i / 8 * 2 + h) as i32));
        let wide = _mm512_castps128_ps512(scale4);
        for h in 0..2 {
            let pick = _mm512_loadu_si512(pick[h].as_ptr() as *const _);
            let scale = _mm512_permutexvar_ps(pick, wide);
            acc[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[h]), scale, acc[h]);
        }
    }

    /// A super-block's integer offset term per output accumulated by `-(d * d_x)` (`scale4`
    /// negated; `d` the offsets' own scale: `dmin` for Q4_K, `d` for Q6_K).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn accumulate_offsets(offsets: &mut __m128, term: __m128i, scale4: __m128) {
        let neg = _mm_xor_ps(scale4, _mm_set1_ps(-0.0));
        *offsets = _mm_fmadd_ps(_mm_cvtepi32_ps(term), neg, *offsets);
    }

    /// Each row's four outputs: its lanes reduced in the documented order, plus its offsets.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn outputs_ymm<const R: usize>(
        acc: &[[__m256; TILE]; R],
        offsets: &[__m128; R],
    ) -> [[f32; TILE]; R] {
        let mut out = [[0f32; TILE]; R];
        for r in 0..R {
            _mm_storeu_ps(
                out[r].as_mut_ptr(),
                _mm_add_ps(reduce4(&acc[r]), offsets[r]),
            );
        }
        out
    }

    /// The same from zmm accumulators of outputs 0 | 2 and 1 | 3.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f")]
    unsafe fn outputs_zmm<const R: usize>(
        acc: &[[__m512; 2]; R],
        offsets: &[__m128; R],
    ) -> [[f32; TILE]; R] {
        let upper = |v: __m512| _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        let split: [[__m256; TILE]; R] = std::array::from_fn(|r| {
            let [even, odd] = acc[r];
            [
                _mm512_castps512_ps256(even),
                _mm512_castps512_ps256(odd),
                upper(even),
                upper(odd),
            ]
        });
        outputs_ymm(&split, offsets)
    }

    /// A super-block's mins term per output, `sum_j m[j][c] * ksum[j]` (exact in `i32`):
    /// `mins` holds the 32 bytes `[block][TILE]`, `ksum` the 8 blocks' activation sums.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mins_term(mins: *const u8, ksum: *const i16) -> __m128i {
        let m = _mm256_loadu_si256(mins as *const __m256i);
        // Within each 128-bit half (blocks 0-3, then 4-7): `[block][output]` to
        // `[output][block]`, so that each pair of 16-bit products belongs to one output.
        let order = _mm256_setr_epi8(
            0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6,
            10, 14, 3, 7, 11, 15,
        );
        let t = _mm256_shuffle_epi8(m, order);
        let first = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(t));
        let second = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(t, 1));
        let sums = _mm_loadu_si128(ksum as *const __m128i);
        let first_sums = _mm256_broadcastq_epi64(sums);
        let second_sums = _mm256_broadcastq_epi64(_mm_unpackhi_epi64(sums, sums));
        let p = _mm256_add_epi32(
            _mm256_madd_epi16(first, first_sums),
            _mm256_madd_epi16(second, second_sums),
        );
        // Lanes 2c and 2c + 1 hold output c's two halves.
        let h = _mm256_hadd_epi32(p, p);
        _mm_unpacklo_epi64(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1))
    }

    /// One Q4_K tile against `R` rows from `r0` (see [`q4k_rows`]), AVX2: per block and
    /// output, `maddubs` then `madd` by the block's scale, added in integers.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn q4k_avx2<const R: usize>(
        w: &[u8],
        d: &[f32],
        dmin: &[f32],
        k: KScales<'_>,
        x: &QuantizedRows,
        r0: usize,
    ) -> [[f32; TILE]; R] {
        let low = _mm256_set1_epi8(0x0f);
        let mut acc = [[_mm256_setzero_ps(); TILE]; R];
        let mut offsets = [_mm_setzero_ps(); R];
        let rows: [_; R] = std::array::from_fn(|r| x.super_row(r0 + r));
        let (wp, sp, mp) = (w.as_ptr(), k.scales.as_ptr(), k.mins.as_ptr());
        for s in 0..d.len() / TILE {
            let mut sums = [[_mm256_setzero_si256(); TILE]; R];
            for j in 0..BLOCKS_PER_SUPER {
                let b = s * BLOCKS_PER_SUPER + j;
                let p0 = _mm256_loadu_si256(wp.add(b * 64) as *const __m256i);
                let p1 = _mm256_loadu_si256(wp.add(b * 64 + 32) as *const __m256i);
                let wv = [
                    _mm256_and_si256(p0, low),
                    _mm256_and_si256(_mm256_srli_epi16(p0, 4), low),
                    _mm256_and_si256(p1, low),
                    _mm256_and_si256(_mm256_srli_epi16(p1, 4), low),
                ];
                let xv: [_; R] = std::array::from_fn(|r| {
                    _mm256_loadu_si256(rows[r].kq.as_ptr().add(b * BLOCK) as *const __m256i)
                });
                for c in 0..TILE {
                    let scale = _mm256_set1_epi16(*sp.add(b * TILE + c) as i16);
                    for r in 0..R {
                        let products = _mm256_maddubs_epi16(wv[c], xv[r]);
                        sums[r][c] =
                            _mm256_add_epi32(sums[r][c], _mm256_madd_epi16(products, scale));
                    }
                }
            }
            let dw = _mm_loadu_ps(d.as_ptr().add(s * TILE));
            let dm = _mm_loadu_ps(dmin.as_ptr().add(s * TILE));
            for r in 0..R {
                let dx = _mm_set1_ps(rows[r].kd[s]);
                accumulate_ymm(&mut acc[r], &sums[r], _mm_mul_ps(dw, dx));
                let mins = mins_term(mp.add(s * 32), rows[r].ksum.as_ptr().add(s * 8));
                accumulate_offsets(&mut offsets[r], mins, _mm_mul_ps(dm, dx));
            }
        }
        outputs_ymm(&acc, &offsets)
    }

    /// One Q4_K tile against `R` rows from `r0` (see [`q4k_rows`]), AVX-512: a block's 64
    /// bytes of nibble pairs are one load; its low nibbles are outputs 0 and 2 side by side,
    /// its high ones 1 and 3, so each `vpmaddubsw` + `vpdpwssd` covers two outputs, each half
    /// with its own block scale (picked by `vpermw` from the super-block's 32 scales).
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn q4k_vnni<const R: usize>(
        w: &[u8],
        d: &[f32],
        dmin: &[f32],
        k: KScales<'_>,
        x: &QuantizedRows,
        r0: usize,
    ) -> [[f32; TILE]; R] {
        let low = _mm512_set1_epi8(0x0f);
        // 16-bit lanes 0-15 take output 0's scale (low nibbles of pair 0), 16-31 output 2's;
        // plus one: outputs 1 and 3. The scales sit at `4 * block + output`.
        let first: [i16; 32] = std::array::from_fn(|i| if i < 16 { 0 } else { 2 });
        let first = _mm512_loadu_si512(first.as_ptr() as *const _);
        let (one, four) = (_mm512_set1_epi16(1), _mm512_set1_epi16(4));
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let mut offsets = [_mm_setzero_ps(); R];
        let rows: [_; R] = std::array::from_fn(|r| x.super_row(r0 + r));
        let (wp, sp, mp) = (w.as_ptr(), k.scales.as_ptr(), k.mins.as_ptr());
        for s in 0..d.len() / TILE {
            let scales = _mm512_cvtepu8_epi16(_mm256_loadu_si256(sp.add(s * 32) as *const _));
            let mut sums = [[_mm512_setzero_si512(); 2]; R];
            let mut at = first;
            for j in 0..BLOCKS_PER_SUPER {
                let b = s * BLOCKS_PER_SUPER + j;
                let pairs = _mm512_loadu_si512(wp.add(b * 64) as *const _);
                let wv = [
                    _mm512_and_si512(pairs, low),
                    _mm512_and_si512(_mm512_srli_epi16(pairs, 4), low),
                ];
                let sc = [
                    _mm512_permutexvar_epi16(at, scales),
                    _mm512_permutexvar_epi16(_mm512_add_epi16(at, one), scales),
                ];
                for r in 0..R {
                    let xv = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                        rows[r].kq.as_ptr().add(b * BLOCK) as *const __m256i,
                    ));
                    for h in 0..2 {
                        let products = _mm512_maddubs_epi16(wv[h], xv);
                        sums[r][h] = _mm512_dpwssd_epi32(sums[r][h], products, sc[h]);
                    }
                }
                at = _mm512_add_epi16(at, four);
            }
            let dw = _mm_loadu_ps(d.as_ptr().add(s * TILE));
            let dm = _mm_loadu_ps(dmin.as_ptr().add(s * TILE));
            for r in 0..R {
                let dx = _mm_set1_ps(rows[r].kd[s]);
                accumulate_zmm(&mut acc[r], &sums[r], _mm_mul_ps(dw, dx));
                let mins = mins_term(mp.add(s * 32), rows[r].ksum.as_ptr().add(s * 8));
                accumulate_offsets(&mut offsets[r], mins, _mm_mul_ps(dm, dx));
            }
        }
        outputs_zmm(&acc, &offsets)
    }

    macro_rules! q8_kernel {
        ($name:ident, $features:literal, $dot:ident) => {
            /// One 8-bit tile against `R` rows from `r0` (`|x|` times `w` carrying x's sign).
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<const R: usize>(
                w: &[i8],
                d: &[f32],
                x: &QuantizedRows,
                r0: usize,
            ) -> [[f32; TILE]; R] {
                let nb = d.len() / TILE;
                let mut acc = [[_mm256_setzero_ps(); TILE]; R];
                let mut xq = [std::ptr::null::<i8>(); R];
                let mut xd = [std::ptr::null::<f32>(); R];
                for r in 0..R {
                    let row = x.row(r0 + r);
                    xq[r] = row.q.as_ptr();
                    xd[r] = row.d.as_ptr();
                }
                let (wp, dp) = (w.as_ptr(), d.as_ptr());
                for b in 0..nb {
                    let mut xv = [_mm256_setzero_si256(); R];
                    let mut ax = [_mm256_setzero_si256(); R];
                    let mut dx = [_mm256_setzero_ps(); R];
                    for r in 0..R {
                        xv[r] = _mm256_loadu_si256(xq[r].add(b * BLOCK) as *const __m256i);
                        ax[r] = _mm256_sign_epi8(xv[r], xv[r]);
                        dx[r] = _mm256_broadcast_ss(&*xd[r].add(b));
                    }
                    for c in 0..TILE {
                        let at = b * TILE + c;
                        let wv = _mm256_loadu_si256(wp.add(at * BLOCK) as *const __m256i);
                        let dw = _mm256_broadcast_ss(&*dp.add(at));
                        for r in 0..R {
                            let sums = _mm256_cvtepi32_ps($dot(ax[r], _mm256_sign_epi8(wv, xv[r])));
                            let scale = _mm256_mul_ps(dw, dx[r]);
                            acc[r][c] = _mm256_fmadd_ps(sums, scale, acc[r][c]);
                        }
                    }
                }
                let mut out = [[0f32; TILE]; R];
                for r in 0..R {
                    _mm_storeu_ps(out[r].as_mut_ptr(), reduce4(&acc[r]));
                }
                out
            }
        };
    }

    /// A Q6_K super-block's offset term per output, `sum_{j,h} sc[j][c][h] * ksum16[j][h]`
    /// (exact in `i32`): `scales` holds the 64 signed bytes `[block][TILE][2]`, `halves` the
    /// 16 half blocks' activation sums.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q6_halves_term(scales: *const i8, halves: *const i16) -> __m128i {
        // The half blocks' sums as 32-bit pairs (h = 0, 1), one per block.
        let pairs = _mm256_loadu_si256(halves as *const __m256i);
        let mut total = _mm256_setzero_si256();
        for q in 0..4 {
            // Blocks 2q and 2q + 1: `[block][output][half]` as 16-bit values; each 32-bit
            // lane (output, both halves) meets its block's pair of sums.
            let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(scales.add(16 * q) as *const __m128i));
            let pick = _mm256_setr_epi32(
                2 * q as i32,
                2 * q as i32,
                2 * q as i32,
                2 * q as i32,
                2 * q as i32 + 1,
                2 * q as i32 + 1,
                2 * q as i32 + 1,
                2 * q as i32 + 1,
            );
            let sums = _mm256_permutevar8x32_epi32(pairs, pick);
            total = _mm256_add_epi32(total, _mm256_madd_epi16(sc, sums));
        }
        // Lanes c and 4 + c hold output c's two blocks.
        _mm_add_epi32(
            _mm256_castsi256_si128(total),
            _mm256_extracti128_si256(total, 1),
        )
    }

    /// One Q6_K tile against `R` rows from `r0` (see [`q6k_rows`]), AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn q6k_avx2<const R: usize>(
        w: Q6Tile<'_>,
        x: &QuantizedRows,
        r0: usize,
    ) -> [[f32; TILE]; R] {
        let low = _mm256_set1_epi8(0x0f);
        let two_bits = _mm256_set1_epi8(0x03);
        let mut acc = [[_mm256_setzero_ps(); TILE]; R];
        let mut offsets = [_mm_setzero_ps(); R];
        let rows: [_; R] = std::array::from_fn(|r| x.super_row(r0 + r));
        let (pp, hp, sp) = (w.pairs.as_ptr(), w.plane.as_ptr(), w.scales.as_ptr());
        for s in 0..w.d.len() / TILE {
            let mut sums = [[_mm256_setzero_si256(); TILE]; R];
            for j in 0..BLOCKS_PER_SUPER {
                let b = s * BLOCKS_PER_SUPER + j;
                let p = [
                    _mm256_loadu_si256(pp.add(b * 64) as *const __m256i),
                    _mm256_loadu_si256(pp.add(b * 64 + 32) as *const __m256i),
                ];
                let plane = _mm256_loadu_si256(hp.add(b * BLOCK) as *const __m256i);
                let xv: [_; R] = std::array::from_fn(|r| {
                    _mm256_loadu_si256(rows[r].kq.as_ptr().add(b * BLOCK) as *const __m256i)
                });
                for c in 0..TILE {
                    let nibbles = match c % 2 {
                        0 => _mm256_and_si256(p[c / 2], low),
                        _ => _mm256_and_si256(_mm256_srli_epi16(p[c / 2], 4), low),
                    };
                    // Shifts within 32-bit lanes: masking to two bits keeps bytes apart.
                    let top = _mm256_and_si256(
                        _mm256_srlv_epi32(plane, _mm256_set1_epi32(2 * c as i32)),
                        two_bits,
                    );
                    let q = _mm256_or_si256(nibbles, _mm256_slli_epi16(top, 4));
                    let at = sp.add((b * TILE + c) * 2);
                    let scale = _mm256_setr_m128i(
                        _mm_set1_epi16(*at as i16),
                        _mm_set1_epi16(*at.add(1) as i16),
                    );
                    for r in 0..R {
                        let products = _mm256_maddubs_epi16(q, xv[r]);
                        sums[r][c] =
                            _mm256_add_epi32(sums[r][c], _mm256_madd_epi16(products, scale));
                    }
                }
            }
            let dw = _mm_loadu_ps(w.d.as_ptr().add(s * TILE));
            for r in 0..R {
                let scale4 = _mm_mul_ps(dw, _mm_set1_ps(rows[r].kd[s]));
                accumulate_ymm(&mut acc[r], &sums[r], scale4);
                let halves = q6_halves_term(sp.add(s * 64), rows[r].ksum16.as_ptr().add(s * 16));
                accumulate_offsets(&mut offsets[r], _mm_slli_epi32(halves, 5), scale4);
            }
        }
        outputs_ymm(&acc, &offsets)
    }

    /// One Q6_K tile against `R` rows from `r0` (see [`q6k_rows`]), AVX-512: as Q4_K's, a
    /// block's 64 bytes of nibble pairs give outputs 0 and 2 (low nibbles) and 1 and 3 (high
    /// ones) side by side; the plane of high bits, in both halves, shifted per half, completes
    /// them; each half block's scale is picked by `vpermt2w` from the super-block's 64.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn q6k_vnni<const R: usize>(
        w: Q6Tile<'_>,
        x: &QuantizedRows,
        r0: usize,
    ) -> [[f32; TILE]; R] {
        let low = _mm512_set1_epi8(0x0f);
        let two_bits = _mm512_set1_epi8(0x03);
        // The high bits of outputs 0 | 2 sit at bits 0 | 4 of the plane's bytes, of 1 | 3 at
        // 2 | 6 (shifts per 16-bit lane; the mask keeps bytes apart).
        let shift: [[i16; 32]; 2] = std::array::from_fn(|h| {
            std::array::from_fn(|i| 2 * h as i16 + if i < 16 { 0 } else { 4 })
        });
        let shift = [
            _mm512_loadu_si512(shift[0].as_ptr() as *const _),
            _mm512_loadu_si512(shift[1].as_ptr() as *const _),
        ];
        // A super-block's 64 scales as 16-bit values at `8 * block + 2 * output + half`; 16-bit
        // lanes 0-7 of outputs 0 | 2 take output 0's first half, 8-15 its second, then output
        // 2's; outputs 1 | 3 likewise. Eight more per block.
        let first: [[i16; 32]; 2] =
            std::array::from_fn(|h| std::array::from_fn(|i| [0, 1, 4, 5][i / 8] + 2 * h as i16));
        let first = [
            _mm512_loadu_si512(first[0].as_ptr() as *const _),
            _mm512_loadu_si512(first[1].as_ptr() as *const _),
        ];
        let eight = _mm512_set1_epi16(8);
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let mut offsets = [_mm_setzero_ps(); R];
        let rows: [_; R] = std::array::from_fn(|r| x.super_row(r0 + r));
        let (pp, hp, sp) = (w.pairs.as_ptr(), w.plane.as_ptr(), w.scales.as_ptr());
        for s in 0..w.d.len() / TILE {
            let sc = [
                _mm512_cvtepi8_epi16(_mm256_loadu_si256(sp.add(s * 64) as *const __m256i)),
                _mm512_cvtepi8_epi16(_mm256_loadu_si256(sp.add(s * 64 + 32) as *const __m256i)),
            ];
            let mut sums = [[_mm512_setzero_si512(); 2]; R];
            let mut at = first;
            for j in 0..BLOCKS_PER_SUPER {
                let b = s * BLOCKS_PER_SUPER + j;
                let pairs = _mm512_loadu_si512(pp.add(b * 64) as *const _);
                let nibbles = [
                    _mm512_and_si512(pairs, low),
                    _mm512_and_si512(_mm512_srli_epi16(pairs, 4), low),
                ];
                let plane =
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(hp.add(b * BLOCK) as *const __m256i));
                let mut q = [_mm512_setzero_si512(); 2];
                let mut scale = [_mm512_setzero_si512(); 2];
                for h in 0..2 {
                    let top = _mm512_and_si512(_mm512_srlv_epi16(plane, shift[h]), two_bits);
                    q[h] = _mm512_or_si512(nibbles[h], _mm512_slli_epi16(top, 4));
                    scale[h] = _mm512_permutex2var_epi16(sc[0], at[h], sc[1]);
                    at[h] = _mm512_add_epi16(at[h], eight);
                }
                for r in 0..R {
                    let xv = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                        rows[r].kq.as_ptr().add(b * BLOCK) as *const __m256i,
                    ));
                    for h in 0..2 {
                        let products = _mm512_maddubs_epi16(q[h], xv);
                        sums[r][h] = _mm512_dpwssd_epi32(sums[r][h], products, scale[h]);
                    }
                }
            }
            let dw = _mm_loadu_ps(w.d.as_ptr().add(s * TILE));
            for r in 0..R {
                let dx = _mm_set1_ps(rows[r].kd[s]);
                let scale4 = _mm_mul_ps(dw, dx);
                accumulate_zmm(&mut acc[r], &sums[r], scale4);
                let halves = q6_halves_term(sp.add(s * 64), rows[r].ksum16.as_ptr().add(s * 16));
                accumulate_offsets(&mut offsets[r], _mm_slli_epi32(halves, 5), scale4);
            }
        }
        outputs_zmm(&acc, &offsets)
    }

    q4_kernel!(q4_avx2, "avx2,fma", dot_avx2);
    q4_kernel!(q4_vnni, "avx2,fma,avx512f,avx512vl,avx512vnni", dot_vnni);
    q8_kernel!(q8_avx2, "avx2,fma", dot_avx2);
    q8_kernel!(q8_vnni, "avx2,fma,avx512f,avx512vl,avx512vnni", dot_vnni);
}

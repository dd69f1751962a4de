//! A LoRA pair's product for a few rows: `y += scale · B·(A·x)`, with `A` as `[rank, n_in]` and
//! `B` kept transposed, `[rank, n_out]`. Transposed, the second product is `rank` scaled row
//! additions into `y`, a chunk of outputs at a time in registers: no horizontal sum per output,
//! which would cost as much as the rank-16 dot product itself.

use super::isa::Isa;

/// A pair's factors, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Factors<'a> {
    /// `A`: `rank × n_in`.
    pub a: &'a [f32],
    /// `B` transposed: `rank × n_out`.
    pub bt: &'a [f32],
    /// The rank.
    pub rank: usize,
}

/// `t[k] = scale · A[k]·x` for every `k < rank`, then `y[o] += Σ_k t[k] · bt[k][o]`, with
/// `n_in = x.len()`, `n_out = y.len()`; `t`: at least `rank` values of scratch. One row of
/// [`add_lowrank_rows`].
pub fn add_lowrank(isa: Isa, f: Factors<'_>, scale: f32, x: &[f32], y: &mut [f32], t: &mut [f32]) {
    add_lowrank_rows(isa, f, scale, &mut [(x, y)], t);
}

/// The portable product of one row (the SIMD families' sums in plain order).
fn portable_row(f: Factors<'_>, scale: f32, x: &[f32], y: &mut [f32], t: &mut [f32]) {
    let Factors { a, bt, rank } = f;
    for (tk, a_row) in t[..rank].iter_mut().zip(a.chunks_exact(x.len())) {
        *tk = scale * a_row.iter().zip(x).map(|(a, x)| a * x).sum::<f32>();
    }
    for (&tk, b_row) in t[..rank].iter().zip(bt.chunks_exact(y.len())) {
        for (yo, b) in y.iter_mut().zip(b_row) {
            *yo += tk * b;
        }
    }
}

/// Most rows [`add_lowrank_rows`] takes at once.
pub const MAX_ROWS: usize = 4;

/// [`add_lowrank`] for up to [`MAX_ROWS`] rows of one adapter at once, `rows[r] = (x, y)`
/// (each `x` of `n_in` values, each `y` of `n_out`): every load of `A` and `B` serves all of
/// them. `t`: at least `rows.len() · rank` values.
pub fn add_lowrank_rows(
    isa: Isa,
    f: Factors<'_>,
    scale: f32,
    rows: &mut [(&[f32], &mut [f32])],
    t: &mut [f32],
) {
    assert!(rows.len() <= MAX_ROWS && t.len() >= rows.len() * f.rank);
    let Some((first_x, first_y)) = rows.first() else {
        return;
    };
    let (n_in, n_out) = (first_x.len(), first_y.len());
    assert!(rows
        .iter()
        .all(|(x, y)| x.len() == n_in && y.len() == n_out));
    assert!(f.a.len() >= f.rank * n_in && f.bt.len() >= f.rank * n_out);
    match (isa, rows.len()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are present for these families; lengths checked above.
        (Isa::Avx2 | Isa::Avx512Vnni, n) => unsafe {
            match n {
                1 => x86::rows::<1>(f, scale, rows, t),
                2 => x86::rows::<2>(f, scale, rows, t),
                3 => x86::rows::<3>(f, scale, rows, t),
                _ => x86::rows::<4>(f, scale, rows, t),
            }
        },
        _ => {
            for (r, (x, y)) in rows.iter_mut().enumerate() {
                portable_row(f, scale, x, y, &mut t[r * f.rank..]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sum8(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// `R` rows at once: `A` rows and `B` chunks loaded once for all of them.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows<const R: usize>(
        f: super::Factors<'_>,
        scale: f32,
        rows: &mut [(&[f32], &mut [f32])],
        t: &mut [f32],
    ) {
        let rank = f.rank;
        let (n_in, n_out) = (rows[0].0.len(), rows[0].1.len());
        let xs: [*const f32; R] = std::array::from_fn(|r| rows[r].0.as_ptr());
        let ys: [*mut f32; R] = std::array::from_fn(|r| rows[r].1.as_mut_ptr());
        let body_in = n_in / 8 * 8;
        for k in 0..rank {
            let a_row = f.a.as_ptr().add(k * n_in);
            let mut acc = [_mm256_setzero_ps(); R];
            let mut i = 0;
            while i < body_in {
                let a = _mm256_loadu_ps(a_row.add(i));
                for r in 0..R {
                    acc[r] = _mm256_fmadd_ps(a, _mm256_loadu_ps(xs[r].add(i)), acc[r]);
                }
                i += 8;
            }
            for r in 0..R {
                let mut dot = sum8(acc[r]);
                for j in body_in..n_in {
                    dot += *a_row.add(j) * *xs[r].add(j);
                }
                t[r * rank + k] = scale * dot;
            }
        }
        let body_out = n_out / 16 * 16;
        let mut o = 0;
        while o < body_out {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for r in 0..R {
                acc[r] = [
                    _mm256_loadu_ps(ys[r].add(o)),
                    _mm256_loadu_ps(ys[r].add(o + 8)),
                ];
            }
            for k in 0..rank {
                let b_row = f.bt.as_ptr().add(k * n_out + o);
                let (b0, b1) = (_mm256_loadu_ps(b_row), _mm256_loadu_ps(b_row.add(8)));
                for r in 0..R {
                    let w = _mm256_set1_ps(t[r * rank + k]);
                    acc[r][0] = _mm256_fmadd_ps(w, b0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(w, b1, acc[r][1]);
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(ys[r].add(o), acc[r][0]);
                _mm256_storeu_ps(ys[r].add(o + 8), acc[r][1]);
            }
            o += 16;
        }
        for o in body_out..n_out {
            for r in 0..R {
                let mut sum = 0f32;
                for k in 0..rank {
                    sum += t[r * rank + k] * *f.bt.as_ptr().add(k * n_out + o);
                }
                *ys[r].add(o) += sum;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_adds_scale_b_a_x() {
        // Odd sizes: every tail of both products runs.
        for (rank, n_in, n_out) in [(16, 576, 1536), (3, 37, 45), (1, 8, 32), (8, 100, 7)] {
            let a: Vec<f32> = (0..rank * n_in)
                .map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5)
                .collect();
            let bt: Vec<f32> = (0..rank * n_out)
                .map(|i| ((i * 5) % 11) as f32 / 11.0 - 0.4)
                .collect();
            let x: Vec<f32> = (0..n_in).map(|i| (i % 9) as f32 * 0.25 - 1.0).collect();
            let y0: Vec<f32> = (0..n_out).map(|i| i as f32 * 0.01).collect();
            let mut expected = y0.clone();
            for (o, e) in expected.iter_mut().enumerate() {
                let mut sum = 0f64;
                for k in 0..rank {
                    let ax: f64 = (0..n_in)
                        .map(|i| a[k * n_in + i] as f64 * x[i] as f64)
                        .sum();
                    sum += 0.5 * ax * bt[k * n_out + o] as f64;
                }
                *e += sum as f32;
            }
            for isa in Isa::all_supported() {
                let mut y = y0.clone();
                let mut t = vec![0f32; rank];
                let f = Factors {
                    a: &a,
                    bt: &bt,
                    rank,
                };
                add_lowrank(isa, f, 0.5, &x, &mut y, &mut t);
                for (o, (got, want)) in y.iter().zip(&expected).enumerate() {
                    assert!(
                        (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                        "{isa:?} rank {rank} {n_in}x{n_out} output {o}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

//! Element-wise math of the forward pass: exponentials for softmax and SiLU, RoPE, f16 rows.
//!
//! The SIMD exponential is a Cephes-style polynomial (range reduction by ln 2, degree-5
//! polynomial, relative error ~2e-7), as in most inference engines; `f32::exp` is a libm call
//! that costs several times more and does not vectorize.

use super::isa::Isa;

/// `x[i] = exp(x[i] - max)` for all `i`; returns the sum.
pub fn exp_sub_sum(isa: Isa, x: &mut [f32], max: f32) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are present for these families.
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::exp_sub_sum(x, max) },
        _ => {
            let mut sum = 0f32;
            for v in x.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            sum
        }
    }
}

/// `gate[i] = silu(gate[i]) * up[i]`, in place.
pub fn silu_mul(isa: Isa, gate: &mut [f32], up: &[f32]) {
    debug_assert!(gate.len() == up.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::silu_mul(gate, up) },
        _ => {
            for (g, &u) in gate.iter_mut().zip(up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        }
    }
}

/// `gate[i] = gelu(gate[i]) * up[i]`, in place, with GELU's tanh approximation (Gemma's MLP,
/// as llama.cpp computes it).
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let inner = SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x);
        *g = 0.5 * x * (1.0 + inner.tanh()) * u;
    }
}

/// Rotates consecutive pairs of `x` (one head) by the angles whose cosines and sines are
/// `cos`, `sin` (`head_dim / 2` each): GGUF llama weights are permuted for this interleaved
/// (GPT-J style) rotation.
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for ((pair, &c), &s) in x.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * c - b * s;
        pair[1] = a * s + b * c;
    }
}

/// Rotates element `i` with element `i + head_dim / 2` of `x` (one head) by the angles whose
/// cosines and sines are `cos`, `sin`: the GPT-NeoX layout that Qwen, Phi and EXAONE use.
pub fn rope_halves(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let (first, second) = x.split_at_mut(x.len() / 2);
    for (((a, b), &c), &s) in first.iter_mut().zip(second.iter_mut()).zip(cos).zip(sin) {
        let (x0, x1) = (*a, *b);
        *a = x0 * c - x1 * s;
        *b = x0 * s + x1 * c;
    }
}

/// f32 to f16 bits, rounding to nearest even.
pub fn to_f16(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_f32(s).to_bits();
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// `exp(x)` for eight lanes (inputs below -87.3 give 0).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(x, _mm256_set1_ps(88.376_26));
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.336_54));
        // n = round(x / ln 2), r = x - n ln 2 (in two parts for precision).
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666_666_5e-1));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        let r2 = _mm256_mul_ps(r, r);
        let p = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        // Scale by 2^n through the exponent bits.
        let pow2 = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        let y = _mm256_mul_ps(p, _mm256_castsi256_ps(pow2));
        // Below the clamp the true value is a denormal or zero: flush to zero.
        let tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3), _CMP_LT_OQ);
        _mm256_andnot_ps(tiny, y)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut sum: f32 = lanes.iter().sum();
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let mut buf = [-f32::INFINITY; 8];
            buf[..rest.len()].copy_from_slice(rest);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), m));
            _mm256_storeu_ps(buf.as_mut_ptr(), e);
            for (v, &e) in rest.iter_mut().zip(&buf) {
                *v = e;
                sum += e;
            }
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
        let n = gate.len();
        let one = _mm256_set1_ps(1.0);
        let neg = _mm256_set1_ps(-0.0);
        let mut i = 0;
        while i + 8 <= n {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            let e = exp8(_mm256_xor_ps(g, neg));
            let s = _mm256_div_ps(g, _mm256_add_ps(one, e));
            _mm256_storeu_ps(gate.as_mut_ptr().add(i), _mm256_mul_ps(s, u));
            i += 8;
        }
        for j in i..n {
            gate[j] = gate[j] / (1.0 + (-gate[j]).exp()) * up[j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_exp_and_silu_are_accurate() {
        for isa in Isa::all_supported() {
            let xs: Vec<f32> = (0..203).map(|i| -60.0 + i as f32 * 0.37).collect();
            let mut e = xs.clone();
            let sum = exp_sub_sum(isa, &mut e, 10.0);
            let mut expected_sum = 0f64;
            for (&x, &e) in xs.iter().zip(&e) {
                let exact = ((x - 10.0) as f64).exp();
                expected_sum += exact;
                assert!(
                    ((e as f64 - exact) / exact).abs() < 1e-6,
                    "{isa:?} exp({x})"
                );
            }
            assert!(((sum as f64 - expected_sum) / expected_sum).abs() < 1e-5);
            let up: Vec<f32> = (0..203).map(|i| 1.0 + i as f32 * 0.01).collect();
            let gate: Vec<f32> = xs.iter().map(|x| x / 4.0).collect();
            let mut out = gate.clone();
            silu_mul(isa, &mut out, &up);
            for i in 0..203 {
                let g = gate[i] as f64;
                let exact = g / (1.0 + (-g).exp()) * up[i] as f64;
                assert!(
                    (out[i] as f64 - exact).abs() < 1e-5 * exact.abs().max(1.0),
                    "{isa:?}"
                );
            }
        }
        let mut very_negative = vec![-200.0f32; 9];
        exp_sub_sum(Isa::detect(), &mut very_negative, 0.0);
        assert!(very_negative.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn rope_halves_rotates_element_i_with_i_plus_half() {
        let mut x = [1.0f32, 0.0, 0.0, 2.0];
        let angle = std::f32::consts::FRAC_PI_2;
        rope_halves(&mut x, &[angle.cos(), 1.0], &[angle.sin(), 0.0]);
        // (x0, x2) = (1, 0) turns a quarter to (0, 1); (x1, x3) = (0, 2) stays.
        assert!(x[0].abs() < 1e-6 && (x[2] - 1.0).abs() < 1e-6, "{x:?}");
        assert_eq!((x[1], x[3]), (0.0, 2.0));
    }

    #[test]
    fn rope_rotates_pairs() {
        let mut x = [1.0f32, 0.0, 0.0, 2.0];
        let angle = std::f32::consts::FRAC_PI_2;
        rope(&mut x, &[angle.cos(), 1.0], &[angle.sin(), 0.0]);
        assert!((x[0]).abs() < 1e-6 && (x[1] - 1.0).abs() < 1e-6);
        assert_eq!(&x[2..], &[0.0, 2.0]);
    }
}

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::*;
use crate::quant;
use crate::quant::tests::random;

/// A random `[n, k]` matrix quantized by candle (GGML's own block formats), repacked by us.
fn matrix(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> (PackedMatrix, Vec<f32>) {
    let w = Tensor::from_vec(random(n * k, seed), (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, dtype).unwrap();
    let dequantized = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let bytes = q.data().unwrap();
    let packed = match dtype {
        GgmlDType::Q4_0 => PackedMatrix::from_q4_0(&bytes, n, k),
        GgmlDType::Q4_1 => PackedMatrix::from_q4_1(&bytes, n, k),
        GgmlDType::Q4K => PackedMatrix::from_q4_k(&bytes, n, k),
        GgmlDType::Q6K => PackedMatrix::from_q6_k(&bytes, n, k),
        GgmlDType::Q5_0 => PackedMatrix::from_q5_0(&bytes, n, k),
        GgmlDType::Q5_1 => PackedMatrix::from_q5_1(&bytes, n, k),
        GgmlDType::Q5K => PackedMatrix::from_q5_k(&bytes, n, k),
        GgmlDType::Q8_0 => PackedMatrix::from_q8_0(&bytes, n, k),
        other => panic!("{other:?}"),
    }
    .unwrap();
    (packed, dequantized)
}

fn rows(x: &[f32], k: usize) -> QuantizedRows {
    let m = x.len() / k;
    let mut rows = QuantizedRows::with_forms(k, k.is_multiple_of(quant::SUPER));
    rows.reset(m);
    let writer = rows.writer();
    for r in 0..m {
        // SAFETY: one thread writes every row.
        unsafe { writer.quantize(Isa::detect(), r, &x[r * k..(r + 1) * k]) };
    }
    rows
}

fn product(isa: Isa, w: &PackedMatrix, x: &QuantizedRows) -> Vec<f32> {
    let mut out = vec![0f32; x.rows() * w.n()];
    matmul(isa, w, x, &mut out, w.n(), 0, Output::Store);
    out
}

#[test]
fn repacking_keeps_every_weight_as_ggml_stores_it() {
    for (dtype, k) in [
        (GgmlDType::Q4_0, 96),
        (GgmlDType::Q4_1, 96),
        (GgmlDType::Q4K, 512),
        (GgmlDType::Q6K, 512),
        (GgmlDType::Q5_0, 96),
        (GgmlDType::Q5_1, 96),
        (GgmlDType::Q5K, 512),
        (GgmlDType::Q8_0, 96),
    ] {
        // 10 outputs: the last tile is half padding.
        let n = 10;
        let (packed, dequantized) = matrix(dtype, n, k, 1);
        let mut row = vec![0f32; k];
        for r in 0..n {
            packed.dequantize_row(r, &mut row);
            assert_eq!(row, dequantized[r * k..(r + 1) * k], "{dtype:?} row {r}");
        }
    }
}

#[test]
fn products_match_the_exact_product_of_the_stored_weights() {
    for (dtype, k) in [
        (GgmlDType::Q4_0, 576),
        (GgmlDType::Q4_1, 576),
        (GgmlDType::Q4K, 768),
        (GgmlDType::Q6K, 768),
        (GgmlDType::Q5_0, 576),
        (GgmlDType::Q5_1, 576),
        (GgmlDType::Q5K, 768),
        (GgmlDType::Q8_0, 576),
    ] {
        let (n, m) = (64, 9);
        let (packed, w) = matrix(dtype, n, k, 2);
        let x = random(m * k, 3);
        let ours = product(Isa::detect(), &packed, &rows(&x, k));
        let mut worst = 0f32;
        let mut largest = 0f32;
        for r in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                    .sum();
                worst = worst.max((ours[r * n + j] as f64 - exact).abs() as f32);
                largest = largest.max(exact.abs() as f32);
            }
        }
        // Only the activations' 8-bit rounding separates the two.
        assert!(
            worst < 0.01 * largest,
            "{dtype:?}: error {worst} against {largest}"
        );
    }
}

#[test]
fn every_kernel_family_gives_the_same_bits() {
    for (dtype, k) in [
        (GgmlDType::Q4_1, 192),
        (GgmlDType::Q4K, 512),
        (GgmlDType::Q6K, 512),
        (GgmlDType::Q5_0, 192),
        (GgmlDType::Q5K, 512),
        (GgmlDType::Q8_0, 192),
    ] {
        let n = 40;
        let (packed, _) = matrix(dtype, n, k, 4);
        for m in [1, 3, 5, 8] {
            let x = rows(&random(m * k, 5), k);
            let reference = product(Isa::Portable, &packed, &x);
            for isa in Isa::all_supported() {
                assert_eq!(
                    product(isa, &packed, &x),
                    reference,
                    "{dtype:?} {isa:?} m={m}"
                );
            }
        }
    }
}

#[test]
fn a_row_does_not_depend_on_the_rest_of_the_batch() {
    for dtype in [
        GgmlDType::Q4_1,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q5_1,
        GgmlDType::Q5K,
        GgmlDType::Q8_0,
    ] {
        // Model-sized shapes (SmolLM2: hidden 576, MLP 1536; K-quants: whole super-blocks);
        // batches across the unpacking threshold and the microkernels' row counts.
        let shapes: &[(usize, usize)] = match dtype {
            GgmlDType::Q4K | GgmlDType::Q6K | GgmlDType::Q5K => &[(192, 512), (520, 1536)],
            _ => &[(192, 576), (1536, 576), (576, 1536)],
        };
        for &(n, k) in shapes {
            let (packed, _) = matrix(dtype, n, k, 6);
            for m in [2, 7, 13, 70] {
                let x = random(m * k, 7);
                let batched = product(Isa::detect(), &packed, &rows(&x, k));
                for r in [0, m / 2, m - 1] {
                    let alone = product(Isa::detect(), &packed, &rows(&x[r * k..(r + 1) * k], k));
                    assert_eq!(
                        alone,
                        batched[r * n..(r + 1) * n],
                        "({n}, {k}) m={m} row {r}"
                    );
                }
            }
        }
    }
}

#[test]
fn stacked_k_quants_compute_what_their_parts_do() {
    for dtype in [
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q5K,
        GgmlDType::Q5_0,
    ] {
        let k = 512;
        let (a, _) = matrix(dtype, 8, k, 14);
        let (b, _) = matrix(dtype, 4, k, 15);
        let ab = PackedMatrix::stack(&[&a, &b]).unwrap();
        let x = rows(&random(2 * k, 16), k);
        let together = product(Isa::detect(), &ab, &x);
        let (pa, pb) = (
            product(Isa::detect(), &a, &x),
            product(Isa::detect(), &b, &x),
        );
        for r in 0..2 {
            assert_eq!(
                together[r * 12..r * 12 + 8],
                pa[r * 8..(r + 1) * 8],
                "{dtype:?}"
            );
            assert_eq!(
                together[r * 12 + 8..(r + 1) * 12],
                pb[r * 4..(r + 1) * 4],
                "{dtype:?}"
            );
        }
    }
}

#[test]
fn stacked_matrices_compute_what_their_parts_do() {
    let k = 128;
    let (a, _) = matrix(GgmlDType::Q4_1, 8, k, 8);
    let (b, _) = matrix(GgmlDType::Q4_1, 12, k, 9);
    let (c, _) = matrix(GgmlDType::Q8_0, 4, k, 10);
    assert!(PackedMatrix::stack(&[&a, &c]).is_none(), "kinds differ");
    let ab = PackedMatrix::stack(&[&a, &b]).unwrap();
    let x = rows(&random(3 * k, 11), k);
    let together = product(Isa::detect(), &ab, &x);
    let (pa, pb) = (
        product(Isa::detect(), &a, &x),
        product(Isa::detect(), &b, &x),
    );
    for r in 0..3 {
        assert_eq!(together[r * 20..r * 20 + 8], pa[r * 8..(r + 1) * 8]);
        assert_eq!(together[r * 20 + 8..(r + 1) * 20], pb[r * 12..(r + 1) * 12]);
    }
}

#[test]
fn accumulate_adds_and_ragged_outputs_stay_in_bounds() {
    // 6 outputs: the second tile is half padding; its padding must not be written.
    let k = 64;
    let w: Vec<f32> = random(6 * k, 12);
    let packed = PackedMatrix::quantize_q8_0(&w, 6, k).unwrap();
    let x = rows(&random(2 * k, 13), k);
    let ldo = 9;
    let mut out = vec![1f32; 2 * ldo];
    matmul(
        Isa::detect(),
        &packed,
        &x,
        &mut out,
        ldo,
        2,
        Output::Accumulate,
    );
    let plain = product(Isa::detect(), &packed, &x);
    for r in 0..2 {
        assert_eq!(out[r * ldo..r * ldo + 2], [1.0, 1.0]);
        assert_eq!(out[r * ldo + 8], 1.0);
        for j in 0..6 {
            assert_eq!(out[r * ldo + 2 + j], 1.0 + plain[r * 6 + j]);
        }
    }
}

#[test]
fn refuses_malformed_data() {
    assert!(PackedMatrix::from_q4_1(&[0; 19], 1, 32).is_err());
    assert!(PackedMatrix::from_q8_0(&[0; 34], 1, 33).is_err());
    assert!(PackedMatrix::from_q6_k(&[0; 210], 1, 128).is_err());
    assert!(PackedMatrix::from_q4_k(&[0; 143], 1, 256).is_err());
    assert!(PackedMatrix::quantize_q8_0(&[0.0; 10], 1, 32).is_err());
}

//! Throughput of the CPU matrix kernels on SmolLM2's shapes, per kernel family and batch size.
//!
//! `cargo bench -p cpu_kernels --bench kernels` prints, for each (weights, rows), the time of one
//! product, the int8 multiply-adds per second and the weight bytes streamed per second. One
//! decode step of SmolLM2-135M is 30 x (qkv + wo + gate_up + down) + the LM head.

use std::time::Instant;

use cpu_kernels::isa::Isa;
use cpu_kernels::matmul::{matmul, Output, PackedMatrix};
use cpu_kernels::quant::QuantizedRows;

fn random(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// A Q4_1-shaped matrix: random nibbles, scales and offsets.
fn q4_1(n: usize, k: usize) -> PackedMatrix {
    let blocks = n * k / 32;
    let mut bytes = Vec::with_capacity(blocks * 20);
    let noise = random(blocks * 18, 1);
    for b in 0..blocks {
        bytes.extend_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        bytes.extend_from_slice(&half::f16::from_f32(-0.08).to_le_bytes());
        for i in 0..16 {
            bytes.push(((noise[b * 18 + i] + 1.0) * 127.0) as u8);
        }
    }
    PackedMatrix::from_q4_1(&bytes, n, k).unwrap()
}

/// A Q4_K-shaped matrix: random nibbles and 6-bit scales and mins, small `d` and `dmin`.
fn q4_k(n: usize, k: usize) -> PackedMatrix {
    let supers = n * k / 256;
    let mut bytes = Vec::with_capacity(supers * 144);
    let noise = random(supers * 140, 2);
    for s in 0..supers {
        bytes.extend_from_slice(&half::f16::from_f32(0.001).to_le_bytes());
        bytes.extend_from_slice(&half::f16::from_f32(0.002).to_le_bytes());
        for i in 0..140 {
            bytes.push(((noise[s * 140 + i] + 1.0) * 127.0) as u8);
        }
    }
    PackedMatrix::from_q4_k(&bytes, n, k).unwrap()
}

/// Decode-shaped products over more weights than the caches hold, as in a real decode step:
/// SmolLM2's gate/up shape for the 32-value block kinds, a 1B model's Q, K and V for Q4_K.
fn cold(isa: Isa) {
    for label in ["q4", "q8", "q4k"] {
        let (n, k, copies) = match label {
            "q4k" => (
                3072,
                2048,
                std::env::var("Q4K_COPIES").map_or(16, |v| v.parse().unwrap()),
            ),
            _ => (3072, 576, 40),
        };
        let matrices: Vec<PackedMatrix> = (0..copies)
            .map(|i| match label {
                "q4" => q4_1(n, k),
                "q4k" => q4_k(n, k),
                _ => PackedMatrix::quantize_q8_0(&random(n * k, i as u64), n, k).unwrap(),
            })
            .collect();
        let total: usize = matrices.iter().map(|m| m.bytes()).sum();
        for m in [1, 16] {
            let mut rows = QuantizedRows::with_forms(k, label == "q4k");
            rows.reset(m);
            let x = random(m * k, 3);
            let writer = rows.writer();
            for r in 0..m {
                unsafe { writer.quantize(isa, r, &x[r * k..(r + 1) * k]) };
            }
            let mut out = vec![0f32; m * n];
            let started = Instant::now();
            let rounds = 20;
            for _ in 0..rounds {
                for w in &matrices {
                    matmul(isa, w, &rows, &mut out, n, 0, Output::Store);
                }
            }
            let each = started.elapsed().as_secs_f64() / rounds as f64;
            println!(
                "{:>11} cold {} MB {label} m={m:>3}: {:>6.2} ms per pass  {:>6.1} GB/s  {:>6.1} GMAC/s",
                isa.name(),
                total / 1_000_000,
                each * 1e3,
                total as f64 / each / 1e9,
                (copies * m * n * k) as f64 / each / 1e9
            );
        }
    }
}

fn main() {
    candle_core::utils::barrier_pool();
    for isa in Isa::all_supported()
        .into_iter()
        .filter(|i| *i != Isa::Portable)
    {
        cold(isa);
    }
    if std::env::var_os("COLD_ONLY").is_some() {
        return;
    }
    let threads = cpu_kernels::parallel::threads();
    println!("threads: {threads}, kernels: {:?}", Isa::all_supported());
    let shapes = [
        ("qkv", 960, 576),
        ("gate_up", 3072, 576),
        ("down", 576, 1536),
    ];
    for isa in Isa::all_supported()
        .into_iter()
        .filter(|i| *i != Isa::Portable)
    {
        for &(name, n, k) in &shapes {
            let w4 = q4_1(n, k);
            let w8 = PackedMatrix::quantize_q8_0(&random(n * k, 2), n, k).unwrap();
            for m in [1, 4, 16, 64] {
                let x = random(m * k, 3);
                let mut rows = QuantizedRows::new(k);
                rows.reset(m);
                let writer = rows.writer();
                for r in 0..m {
                    unsafe { writer.quantize(isa, r, &x[r * k..(r + 1) * k]) };
                }
                let mut out = vec![0f32; m * n];
                for (label, w) in [("q4", &w4), ("q8", &w8)] {
                    let iters = (20_000 / m).max(50);
                    for _ in 0..10 {
                        matmul(isa, w, &rows, &mut out, n, 0, Output::Store);
                    }
                    let started = Instant::now();
                    for _ in 0..iters {
                        matmul(isa, w, &rows, &mut out, n, 0, Output::Store);
                    }
                    let each = started.elapsed().as_secs_f64() / iters as f64;
                    println!(
                        "{:>11} {name:>8} {label} m={m:>3}: {:>8.1} us  {:>6.1} GMAC/s  {:>6.1} GB/s of weights",
                        isa.name(),
                        each * 1e6,
                        (m * n * k) as f64 / each / 1e9,
                        w.bytes() as f64 / each / 1e9,
                    );
                }
            }
        }
    }
}

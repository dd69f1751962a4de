//! How fast this machine streams memory into the engine's threads: sums a 1 GiB buffer (far
//! larger than any cache) with one thread and with every thread of the kernels' pool, as a
//! decode step reads its weights, and prints the best of five passes in GB/s. The benchmarks
//! hold decode speed against it (`scripts/bench-vs-llama-cpp.sh`: bytes a step streams / step
//! time). `GATEWAY_THREADS`-style sizing: the pool has `CANDLE_NUM_THREADS` or every core.
//!
//! `cargo run --release -p cpu_kernels --example read_bandwidth` prints
//! `read bandwidth GB/s: 1 thread X, N threads Y`.

use std::time::Instant;

use cpu_kernels::parallel;

const BYTES: usize = 1 << 30;

/// Sums `words` eight lanes at a time (the compiler vectorises it): a load per 8 bytes, no
/// other work, so the loop waits on memory alone.
fn sum(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    for chunk in words.chunks_exact(8) {
        for (lane, &w) in lanes.iter_mut().zip(chunk) {
            *lane = lane.wrapping_add(w);
        }
    }
    lanes.iter().fold(0, |a, &b| a.wrapping_add(b))
}

/// GB/s of the best of five passes over `words`, split in `chunks` parts over the pool.
fn best_pass(words: &[u64], chunks: usize) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let total = std::sync::atomic::AtomicU64::new(0);
        let grain = words.len().div_ceil(chunks);
        parallel::for_each_chunk(words.len(), grain, |_, range| {
            let s = sum(&words[range]);
            total.fetch_add(s, std::sync::atomic::Ordering::Relaxed);
        });
        std::hint::black_box(total.into_inner());
        best = best.min(start.elapsed().as_secs_f64());
    }
    BYTES as f64 / best / 1e9
}

fn main() {
    // Written first: every page is backed before anything is timed.
    let words: Vec<u64> = (0..BYTES / 8).map(|i| i as u64).collect();
    let threads = parallel::threads();
    let one = best_pass(&words, 1);
    let all = best_pass(&words, threads);
    println!("read bandwidth GB/s: 1 thread {one:.1}, {threads} threads {all:.1}");
}

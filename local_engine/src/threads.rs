//! The number of threads the model's matrix work runs on.
//!
//! candle parallelises its CPU kernels on rayon's global pool and sizes its gemm calls from
//! `RAYON_NUM_THREADS`, so both are set, once, before any model work starts.

/// Sets the matmul thread count; `None` uses every core. Call before loading a model. Returns
/// the count in effect (an earlier call, or a pool another library built first, wins).
pub fn configure(threads: Option<usize>) -> usize {
    let n = threads
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // Called at start-up, before the process has other threads reading the environment.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    rayon::current_num_threads()
}

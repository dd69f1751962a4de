//! What this binary is: its version, commit and compiled-in features.

/// The crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit it was built from (`unknown` outside a checkout).
pub const COMMIT: &str = env!("GATEWAY_GIT_COMMIT");

/// The accelerator features compiled in (`cuda`, `metal`); empty for a CPU-only build.
pub fn features() -> Vec<&'static str> {
    let mut features = Vec::new();
    if cfg!(feature = "cuda") {
        features.push("cuda");
    }
    if cfg!(feature = "metal") {
        features.push("metal");
    }
    features
}

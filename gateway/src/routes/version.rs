//! `GET /version`: what is running, for operators and bug reports.

use axum::Json;
use serde_json::{json, Value};

/// The gateway's version, the commit it was built from (`unknown` outside a git checkout),
/// the accelerator features compiled in, and the CPU kernels the engines chose on this machine.
pub async fn version() -> Json<Value> {
    Json(json!({
        "version": crate::build::VERSION,
        "commit": crate::build::COMMIT,
        "features": crate::build::features(),
        "cpu_kernels": local_engine::cpu_kernels(),
    }))
}

//! Prometheus metrics (`GET /metrics`): the engines' counters read at scrape time, and the
//! per-request series recorded as requests end. Every series is listed in
//! `docs/observability.md`.

mod engine;
mod requests;

use std::sync::Arc;

use prometheus_client::registry::Registry;

pub use engine::EngineCollector;
pub use requests::{LatencyHandles, RequestMetrics};

use crate::state::{AppState, ModelRegistry};

/// Builds the registry for a server.
pub fn registry(models: Arc<ModelRegistry>, requests: &RequestMetrics) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(EngineCollector::new(models)));
    requests.register(&mut registry);
    registry
}

/// Prometheus text of every metric.
pub fn render(state: &AppState) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &state.metrics)
        .expect("writing to a String cannot fail");
    out
}

//! Prometheus metrics (`GET /metrics`): the engines' counters read at scrape time, and the
//! per-request series recorded as requests end. Every series is listed in
//! `docs/observability.md`.

mod classic;
mod engine;
mod process;
mod quota_store;
mod requests;

use std::sync::Arc;

use policies::QuotaStore;
use prometheus_client::registry::Registry;

pub use classic::to_classic_text;
pub use engine::{tenant_activity, EngineCollector, TenantActivity};
pub use process::ProcessCollector;
pub use quota_store::QuotaStoreCollector;
pub use requests::{AllowanceLabels, CrossingLabels, LatencyHandles, RequestMetrics};

use crate::models::ModelRegistry;

/// Builds the registry for a server.
pub fn registry(
    models: Arc<ModelRegistry>,
    requests: &RequestMetrics,
    quotas: Arc<dyn QuotaStore>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(EngineCollector::new(models)));
    registry.register_collector(Box::new(QuotaStoreCollector(quotas)));
    registry.register_collector(Box::new(ProcessCollector));
    requests.register(&mut registry);
    registry
}

/// Every metric in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

//! The shared quota store's health (`gateway_quota_store_*`), read at scrape time. Absent when
//! quotas are counted in process.

use std::sync::Arc;

use policies::QuotaStore;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Encodes the quota store's series on each scrape.
pub struct QuotaStoreCollector(pub Arc<dyn QuotaStore>);

impl std::fmt::Debug for QuotaStoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuotaStoreCollector")
    }
}

impl Collector for QuotaStoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(health) = self.0.health() else {
            return Ok(());
        };
        ConstGauge::new(i64::from(health.available)).encode(encoder.encode_descriptor(
            "gateway_quota_store_available",
            "1 while the shared quota store (Redis) answers, 0 while it does not.",
            None,
            MetricType::Gauge,
        )?)?;
        let counters = [
            (
                "gateway_quota_store_errors",
                "Calls to the shared quota store that failed (unreachable, timed out).",
                health.errors,
            ),
            (
                "gateway_quota_store_fallback_admissions",
                "Requests admitted by this replica's own limits while the store was unavailable (fail_open).",
                health.fallback_admissions,
            ),
            (
                "gateway_quota_store_unavailable_refusals",
                "Requests refused with 503 while the store was unavailable (fail_closed).",
                health.unavailable_refusals,
            ),
        ];
        for (name, help, value) in counters {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}

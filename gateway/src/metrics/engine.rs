//! The engines' own counters and gauges, read at scrape time (nothing is recorded twice).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use engines::EngineCounters;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::state::{ModelRegistry, ModelState};

/// Reads every ready engine's counters on each scrape.
#[derive(Debug)]
pub struct EngineCollector {
    models: Arc<ModelRegistryHandle>,
}

impl EngineCollector {
    pub fn new(models: Arc<ModelRegistry>) -> Self {
        Self {
            models: Arc::new(ModelRegistryHandle(models)),
        }
    }
}

/// `ModelRegistry` is not `Debug`; the collector only needs to reach it.
struct ModelRegistryHandle(Arc<ModelRegistry>);

impl std::fmt::Debug for ModelRegistryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelRegistry")
    }
}

type CounterField = fn(&EngineCounters) -> &AtomicU64;

/// `(name without _total, help, field)`.
const ENGINE_COUNTERS: [(&str, &str, CounterField); 9] = [
    (
        "gateway_engine_requests_submitted",
        "Requests accepted by the engine.",
        |c| &c.submitted,
    ),
    (
        "gateway_engine_requests_finished",
        "Requests that ran to a stop or length limit.",
        |c| &c.finished,
    ),
    (
        "gateway_engine_requests_cancelled",
        "Requests freed because the client went away.",
        |c| &c.cancelled,
    ),
    (
        "gateway_engine_requests_failed",
        "Requests that failed inside the engine.",
        |c| &c.failed,
    ),
    (
        "gateway_engine_prompt_tokens",
        "Prompt tokens processed.",
        |c| &c.prompt_tokens,
    ),
    ("gateway_engine_generated_tokens", "Tokens sampled.", |c| {
        &c.generated_tokens
    }),
    ("gateway_engine_steps", "Forward passes run.", |c| &c.steps),
    (
        "gateway_engine_batch_tokens",
        "Tokens run through the model, over all steps.",
        |c| &c.batch_tokens,
    ),
    (
        "gateway_engine_preemptions",
        "Sequences preempted (KV blocks freed, recomputed later).",
        |c| &c.preemptions,
    ),
];

/// `(name, help, field)` of the engine gauges.
const ENGINE_GAUGES: [(&str, &str, CounterField); 5] = [
    (
        "gateway_engine_active_sequences",
        "Sequences running or waiting in the engine.",
        |c| &c.active,
    ),
    (
        "gateway_engine_running_sequences",
        "Sequences in the running batch.",
        |c| &c.running,
    ),
    (
        "gateway_engine_waiting_sequences",
        "Sequences waiting for admission.",
        |c| &c.waiting,
    ),
    (
        "gateway_engine_kv_blocks_free",
        "Free KV-cache blocks.",
        |c| &c.kv_blocks_free,
    ),
    (
        "gateway_engine_kv_blocks_total",
        "KV-cache blocks in the pool.",
        |c| &c.kv_blocks_total,
    ),
];

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let models = self.models.0.list();
        // Health: 1 while the model's pool can serve, 0 while loading or failed.
        let mut family = encoder.encode_descriptor(
            "gateway_pool_up",
            "1 if the pool serving the model is ready, else 0.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (id, _, state) in &models {
            let up = i64::from(matches!(state, ModelState::Ready(_)));
            ConstGauge::new(up)
                .encode(family.encode_family(&[("model", id.as_str()), ("pool", "local")])?)?;
        }
        let engines: Vec<(String, Arc<dyn engines::Engine>)> = models
            .into_iter()
            .filter_map(|(id, _, state)| match state {
                ModelState::Ready(engine) => Some((id, engine)),
                _ => None,
            })
            .collect();
        for (name, help, field) in ENGINE_COUNTERS {
            encode_per_model(&mut encoder, name, help, &engines, field, |v| {
                ConstCounter::new(v)
            })?;
        }
        for (name, help, field) in ENGINE_GAUGES {
            encode_per_model(&mut encoder, name, help, &engines, field, |v| {
                ConstGauge::new(v as i64)
            })?;
        }
        Ok(())
    }
}

/// One metric family with a sample per ready model (label `model`).
fn encode_per_model<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    engines: &[(String, Arc<dyn engines::Engine>)],
    field: CounterField,
    metric: impl Fn(u64) -> M,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric(0).metric_type())?;
    for (model, engine) in engines {
        let value = EngineCounters::get(field(engine.counters()));
        metric(value).encode(family.encode_family(&[("model", model.as_str())])?)?;
    }
    Ok(())
}

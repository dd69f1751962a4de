//! The engines' own counters and gauges, read at scrape time (nothing is recorded twice).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use std::collections::BTreeMap;

use engine_api::{EngineCounters, TenantCounters};
use policies::TenantId;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use routing::{Availability, ModelRouter, Replica};

use crate::models::{ModelRegistry, ModelState};

/// Reads every ready engine's counters on each scrape.
#[derive(Debug)]
pub struct EngineCollector {
    models: Arc<ModelRegistryHandle>,
}

impl EngineCollector {
    /// A collector over the models of `models`.
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
const ENGINE_COUNTERS: [(&str, &str, CounterField); 11] = [
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
    (
        "gateway_engine_prefix_cache_query_tokens",
        "Prompt tokens looked up in the prefix cache.",
        |c| &c.prefix_query_tokens,
    ),
    (
        "gateway_engine_prefix_cache_hit_tokens",
        "Prompt tokens found in the prefix cache (not computed).",
        |c| &c.prefix_hit_tokens,
    ),
];

/// `(name, help, field)` of the engine gauges.
const ENGINE_GAUGES: [(&str, &str, CounterField); 6] = [
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
        "gateway_engine_kv_blocks",
        "KV-cache blocks in the pool (free or not).",
        |c| &c.kv_blocks_total,
    ),
    (
        "gateway_engine_kv_blocks_cached",
        "KV-cache blocks in the prefix cache (held by a sequence or free to evict).",
        |c| &c.kv_blocks_cached,
    ),
];

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let models = self.models.0.list();
        let now = std::time::Instant::now();
        let routers = ready_routers(&self.models.0);
        // Health: 1 while some replica of the pool can take requests, 0 while every one is out
        // (or the model is loading or failed to load).
        let mut family = encoder.encode_descriptor(
            "gateway_pool_up",
            "1 if some replica of the pool can serve the model, else 0.",
            None,
            MetricType::Gauge,
        )?;
        for (id, _, state) in &models {
            let ModelState::Ready(router) = state else {
                ConstGauge::new(0)
                    .encode(family.encode_family(&[("model", id.as_str()), ("pool", "")])?)?;
                continue;
            };
            for pool in router.pools() {
                let up = pool
                    .replicas
                    .iter()
                    .any(|r| r.availability(now) != Availability::Out);
                let labels = [("model", id.as_str()), ("pool", &*pool.name)];
                ConstGauge::new(i64::from(up)).encode(family.encode_family(&labels)?)?;
            }
        }
        encode_per_replica(
            &mut encoder,
            ("gateway_replica_up", MetricType::Gauge),
            "1 if the replica takes requests (its circuit breaker is closed or half-open), else 0.",
            &routers,
            |r| ConstGauge::new(i64::from(r.availability(now) != Availability::Out)),
        )?;
        encode_per_replica(
            &mut encoder,
            ("gateway_replica_stalls", MetricType::Counter),
            "Requests that found the replica silent past a stall timeout (each took it out at once).",
            &routers,
            |r| ConstCounter::new(r.stalls()),
        )?;
        encode_per_replica(
            &mut encoder,
            ("gateway_replica_outstanding_tokens", MetricType::Gauge),
            "Prompt plus max_tokens not yet generated, over the requests routed to the replica.",
            &routers,
            |r| ConstGauge::new(r.outstanding_tokens() as i64),
        )?;
        for (name, help, field) in ENGINE_COUNTERS {
            encode_per_model(&mut encoder, name, help, &routers, field, |v| {
                ConstCounter::new(v)
            })?;
        }
        for (name, help, field) in ENGINE_GAUGES {
            encode_per_model(&mut encoder, name, help, &routers, field, |v| {
                ConstGauge::new(v as i64)
            })?;
        }
        encode_kv_usage(&mut encoder, &routers)?;
        encode_per_tenant(&mut encoder, &routers)?;
        encode_adapters(&mut encoder, &routers)?;
        encode_waiting_room(&mut encoder, &routers)?;
        Ok(())
    }
}

/// One metric family with a sample per ready model (label `model`): the sum over the model's
/// replicas (remote replicas count their requests; their batch gauges stay 0, see
/// `/admin/pools` for what workers report).
fn encode_per_model<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    routers: &[(String, Arc<ModelRouter>)],
    field: CounterField,
    metric: impl Fn(u64) -> M,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric(0).metric_type())?;
    for (model, router) in routers {
        let value = router
            .replicas()
            .map(|r| EngineCounters::get(field(r.counters())))
            .sum();
        metric(value).encode(family.encode_family(&[("model", model.as_str())])?)?;
    }
    Ok(())
}

type TenantField = fn(&TenantCounters) -> &AtomicU64;

/// `(name without _total, help, field, is a counter)` of the per-tenant engine figures.
const TENANT_FIGURES: [(&str, &str, TenantField, bool); 8] = [
    (
        "gateway_engine_tenant_waiting_sequences",
        "The tenant's sequences waiting for admission (new or preempted).",
        |c| &c.waiting,
        false,
    ),
    (
        "gateway_engine_tenant_running_sequences",
        "The tenant's sequences in the running batch.",
        |c| &c.running,
        false,
    ),
    (
        "gateway_engine_tenant_admissions",
        "The tenant's requests admitted into the running batch (first admission).",
        |c| &c.admitted,
        true,
    ),
    (
        "gateway_engine_tenant_preemptions",
        "Times one of the tenant's sequences was preempted (recomputed later).",
        |c| &c.preemptions,
        true,
    ),
    (
        "gateway_engine_tenant_service_tokens",
        "Tokens run through the model for the tenant (prompt, recompute and decode): the service it received.",
        |c| &c.service_tokens,
        true,
    ),
    (
        "gateway_engine_tenant_refused",
        "The tenant's requests refused because its waiting queue was full, or shed (batch class) from a backed-up engine.",
        |c| &c.refused,
        true,
    ),
    (
        "gateway_engine_tenant_prefix_cache_query_tokens",
        "The tenant's prompt tokens looked up in the prefix cache.",
        |c| &c.prefix_query_tokens,
        true,
    ),
    (
        "gateway_engine_tenant_prefix_cache_hit_tokens",
        "The tenant's prompt tokens found in the prefix cache (not computed).",
        |c| &c.prefix_hit_tokens,
        true,
    ),
];

/// The `gateway_engine_tenant_*` families: per model and tenant, summed over the replicas.
/// Queue time is `gateway_engine_tenant_queue_seconds_total` over `..._admissions_total`.
fn encode_per_tenant(
    encoder: &mut DescriptorEncoder,
    routers: &[(String, Arc<ModelRouter>)],
) -> Result<(), std::fmt::Error> {
    let rows = tenant_counters(routers);
    for (name, help, field, is_counter) in TENANT_FIGURES {
        let kind = if is_counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        };
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for ((model, tenant), counters) in &rows {
            let labels = [("model", *model), ("tenant", tenant.as_str())];
            let value = sum(counters, field);
            match is_counter {
                true => ConstCounter::new(value).encode(family.encode_family(&labels)?)?,
                false => ConstGauge::new(value as i64).encode(family.encode_family(&labels)?)?,
            }
        }
    }
    let mut family = encoder.encode_descriptor(
        "gateway_engine_tenant_queue_seconds",
        "Time the tenant's requests waited from submission to first admission, summed.",
        None,
        MetricType::Counter,
    )?;
    for ((model, tenant), counters) in &rows {
        let seconds = sum(counters, |c| &c.queue_nanos) as f64 / 1e9;
        let labels = [("model", *model), ("tenant", tenant.as_str())];
        ConstCounter::new(seconds).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Every ready model's router.
fn ready_routers(models: &ModelRegistry) -> Vec<(String, Arc<ModelRouter>)> {
    models
        .list()
        .into_iter()
        .filter_map(|(id, _, state)| match state {
            ModelState::Ready(router) => Some((id, router)),
            _ => None,
        })
        .collect()
}

/// (model, tenant) -> the counters of every replica that has seen the tenant.
fn tenant_counters(
    routers: &[(String, Arc<ModelRouter>)],
) -> BTreeMap<(&str, TenantId), Vec<Arc<TenantCounters>>> {
    let mut rows: BTreeMap<(&str, TenantId), Vec<Arc<TenantCounters>>> = BTreeMap::new();
    for (model, router) in routers {
        for replica in router.replicas() {
            for entry in replica.counters().tenants.iter() {
                rows.entry((model.as_str(), entry.key().clone()))
                    .or_default()
                    .push(entry.value().clone());
            }
        }
    }
    rows
}

/// `field` summed over `counters`.
fn sum(counters: &[Arc<TenantCounters>], field: TenantField) -> u64 {
    counters.iter().map(|c| EngineCounters::get(field(c))).sum()
}

/// One tenant's activity on one model, over this process's replicas, now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantActivity {
    /// The model.
    pub model: String,
    /// The tenant.
    pub tenant: String,
    /// Its sequences in the running batches.
    pub running: u64,
    /// Its sequences waiting in the engines.
    pub waiting: u64,
    /// Its requests waiting at the gateway for a saturated pool.
    pub waiting_at_gateway: u64,
    /// Tokens run through the model for it so far (a counter: its rate is its service).
    pub service_tokens: u64,
}

/// Every tenant's activity on every ready model (what `gateway_engine_tenant_*` and
/// `gateway_router_waiting_requests` show, as rows).
pub fn tenant_activity(models: &ModelRegistry) -> Vec<TenantActivity> {
    let routers = ready_routers(models);
    let mut rows: BTreeMap<(String, String), TenantActivity> = BTreeMap::new();
    for ((model, tenant), counters) in tenant_counters(&routers) {
        let row = TenantActivity {
            model: model.to_string(),
            tenant: tenant.as_str().to_string(),
            running: sum(&counters, |c| &c.running),
            waiting: sum(&counters, |c| &c.waiting),
            waiting_at_gateway: 0,
            service_tokens: sum(&counters, |c| &c.service_tokens),
        };
        rows.insert((row.model.clone(), row.tenant.clone()), row);
    }
    for (model, router) in &routers {
        let Some(room) = router.waiting_room() else {
            continue;
        };
        for (tenant, n) in room.waiting() {
            let key = (model.clone(), tenant.as_str().to_string());
            rows.entry(key)
                .or_insert_with(|| TenantActivity {
                    model: model.clone(),
                    tenant: tenant.as_str().to_string(),
                    running: 0,
                    waiting: 0,
                    waiting_at_gateway: 0,
                    service_tokens: 0,
                })
                .waiting_at_gateway = n as u64;
        }
    }
    rows.into_values().collect()
}

/// `gateway_adapter_loaded`: per model and LoRA adapter, the replicas in this process that hold
/// it loaded (an adapter loads on the first request that names it, and leaves under memory
/// pressure when unused).
fn encode_adapters(
    encoder: &mut DescriptorEncoder,
    routers: &[(String, Arc<ModelRouter>)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "gateway_adapter_loaded",
        "Replicas in this process holding the LoRA adapter loaded.",
        None,
        MetricType::Gauge,
    )?;
    for (model, router) in routers {
        let mut loaded: BTreeMap<String, i64> = BTreeMap::new();
        for replica in router.replicas() {
            for id in replica.engine.loaded_adapters() {
                *loaded.entry(id).or_default() += 1;
            }
        }
        for (adapter, replicas) in loaded {
            let labels = [("model", model.as_str()), ("adapter", adapter.as_str())];
            ConstGauge::new(replicas).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// `gateway_router_waiting_requests`: per model and tenant, requests waiting at the gateway for
/// a saturated pool (the waiting room).
fn encode_waiting_room(
    encoder: &mut DescriptorEncoder,
    routers: &[(String, Arc<ModelRouter>)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "gateway_router_waiting_requests",
        "Requests waiting at the gateway because every replica they may use is saturated.",
        None,
        MetricType::Gauge,
    )?;
    for (model, router) in routers {
        let Some(room) = router.waiting_room() else {
            continue;
        };
        for (tenant, n) in room.waiting() {
            let labels = [("model", model.as_str()), ("tenant", tenant.as_str())];
            ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// `gateway_engine_kv_cache_usage_ratio`: the share of the model's KV blocks in use, 0 to 1
/// (vLLM's `vllm:kv_cache_usage_perc`), over its local replicas.
fn encode_kv_usage(
    encoder: &mut DescriptorEncoder,
    routers: &[(String, Arc<ModelRouter>)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "gateway_engine_kv_cache_usage_ratio",
        "Share of the KV-cache blocks in use, 0 to 1.",
        None,
        MetricType::Gauge,
    )?;
    for (model, router) in routers {
        let (mut free, mut total) = (0u64, 0u64);
        for replica in router.replicas() {
            free += EngineCounters::get(&replica.counters().kv_blocks_free);
            total += EngineCounters::get(&replica.counters().kv_blocks_total);
        }
        let ratio = match total {
            0 => 0.0,
            total => total.saturating_sub(free) as f64 / total as f64,
        };
        ConstGauge::new(ratio).encode(family.encode_family(&[("model", model.as_str())])?)?;
    }
    Ok(())
}

/// One family of `metric_type` with a sample per replica (labels `model`, `pool`, `replica`);
/// a counter's name gets `_total` from the encoder.
fn encode_per_replica<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    (name, metric_type): (&str, MetricType),
    help: &str,
    routers: &[(String, Arc<ModelRouter>)],
    metric: impl Fn(&Replica) -> M,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (model, router) in routers {
        for pool in router.pools() {
            for replica in &pool.replicas {
                let labels = [
                    ("model", model.as_str()),
                    ("pool", &*pool.name),
                    ("replica", &*replica.name),
                ];
                metric(replica).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

//! Live counters of an engine and of each tenant in it, readable from any thread (metrics,
//! `/load`, routing's replica choice).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use policies::TenantId;

/// Live counters of an engine, readable from any thread.
#[derive(Debug, Default)]
pub struct EngineCounters {
    /// Requests accepted.
    pub submitted: AtomicU64,
    /// Requests that ran to a stop or length limit.
    pub finished: AtomicU64,
    /// Sequences freed because their receiver was dropped (client gone).
    pub cancelled: AtomicU64,
    /// Requests that failed inside the engine.
    pub failed: AtomicU64,
    /// Prompt tokens processed.
    pub prompt_tokens: AtomicU64,
    /// Tokens sampled.
    pub generated_tokens: AtomicU64,
    /// Forward passes run.
    pub steps: AtomicU64,
    /// Tokens run through the model, over all steps (divide by `steps` for the mean batch).
    pub batch_tokens: AtomicU64,
    /// Sequences whose KV blocks were freed to let others finish (recomputed later).
    pub preemptions: AtomicU64,
    /// Sequences currently running or waiting.
    pub active: AtomicU64,
    /// Sequences in the running batch.
    pub running: AtomicU64,
    /// Sequences waiting for admission.
    pub waiting: AtomicU64,
    /// Free KV-cache blocks.
    pub kv_blocks_free: AtomicU64,
    /// KV-cache blocks in the pool.
    pub kv_blocks_total: AtomicU64,
    /// KV-cache blocks registered in the prefix cache (held or free to evict).
    pub kv_blocks_cached: AtomicU64,
    /// Prompt tokens looked up in the prefix cache (at each request's first admission).
    pub prefix_query_tokens: AtomicU64,
    /// Of those, tokens found there (not computed).
    pub prefix_hit_tokens: AtomicU64,
    /// Per tenant: queue, service and preemptions.
    pub tenants: dashmap::DashMap<TenantId, Arc<TenantCounters>>,
}

impl EngineCounters {
    /// Reads one counter (relaxed: the figures are for monitoring).
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// `tenant`'s counters, created at its first request. Sequences keep the `Arc`, so the
    /// scheduler thread updates them without touching the map.
    pub fn tenant(&self, tenant: &TenantId) -> Arc<TenantCounters> {
        if let Some(counters) = self.tenants.get(tenant) {
            return counters.clone();
        }
        self.tenants.entry(tenant.clone()).or_default().clone()
    }
}

/// One tenant's figures in one engine (for `gateway_engine_tenant_*`).
#[derive(Debug, Default)]
pub struct TenantCounters {
    /// Sequences waiting for admission now (new or preempted).
    pub waiting: AtomicU64,
    /// Sequences in the running batch now.
    pub running: AtomicU64,
    /// Sequences admitted for the first time (each one's queue time is in `queue_nanos`).
    pub admitted: AtomicU64,
    /// Time from submission to first admission, summed over `admitted`, in nanoseconds.
    pub queue_nanos: AtomicU64,
    /// Times one of its sequences was preempted (blocks freed, recomputed later).
    pub preemptions: AtomicU64,
    /// Tokens run through the model for it (prompt, recompute and decode): the service
    /// received.
    pub service_tokens: AtomicU64,
    /// Requests refused because its waiting queue was full, or shed (batch class) because
    /// the engine was backed up.
    pub refused: AtomicU64,
    /// Its prompt tokens looked up in the prefix cache.
    pub prefix_query_tokens: AtomicU64,
    /// Of those, tokens found there (not computed).
    pub prefix_hit_tokens: AtomicU64,
}

//! Per-request series: requests, tokens and rejections by tenant, latencies by tenant, model and
//! pool (tenants are configured, so the `tenant` label's values are bounded).
//! Recorded where the request ends (see `accounting`), so they agree with the usage ledger.

use policies::TenantId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// The labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The tenant.
    pub tenant: String,
    /// The configured model served, or empty.
    pub model: String,
    /// HTTP status code of the response.
    pub status: String,
}

/// The labels of the token counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// The tenant.
    pub tenant: String,
    /// The model.
    pub model: String,
}

/// The labels of the rejection counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    /// The tenant.
    pub tenant: String,
    /// Which limit: `requests_per_minute`, `tokens_per_minute`, `max_concurrent`, `daily_tokens`.
    pub reason: String,
}

/// The labels of the latency histograms.
/// A grant or budget, by the labels of `gateway_allowance_used_ratio`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AllowanceLabels {
    /// `grant` or `budget`.
    pub kind: String,
    /// Its id (operators name them: the set is theirs, not the clients').
    pub id: String,
    /// Its tenant.
    pub tenant: String,
}

/// A threshold an allowance's use crossed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CrossingLabels {
    /// `grant` or `budget`.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// The threshold, in percent of its amount.
    pub threshold: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    /// The tenant: fair share is seen per tenant.
    pub tenant: String,
    /// The model.
    pub model: String,
    /// The pool that served it.
    pub pool: String,
}

type Histograms = Family<LatencyLabels, Histogram, fn() -> Histogram>;

fn seconds_from_5ms() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15)) // 5 ms .. 82 s
}
fn seconds_from_1ms() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14)) // 1 ms .. 8 s
}
fn seconds_from_10ms() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 16)) // 10 ms .. 5.5 min
}

/// The per-request families. `enabled = false` (`[telemetry] metrics = false`) records nothing,
/// for measuring what recording costs.
#[derive(Debug)]
pub struct RequestMetrics {
    /// False: nothing is recorded.
    pub enabled: bool,
    /// `gateway_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `gateway_prompt_tokens_total`.
    pub prompt_tokens: Family<TokenLabels, Counter>,
    /// `gateway_completion_tokens_total`.
    pub completion_tokens: Family<TokenLabels, Counter>,
    /// `gateway_rate_limited_requests_total`.
    pub rejections: Family<RejectionLabels, Counter>,
    /// `gateway_time_to_first_token_seconds`.
    pub time_to_first_token: Histograms,
    /// `gateway_inter_token_latency_seconds`.
    pub inter_token_latency: Histograms,
    /// `gateway_e2e_request_latency_seconds`.
    pub e2e_latency: Histograms,
    /// `gateway_queue_time_seconds`.
    pub queue_time: Histograms,
    /// `gateway_ledger_write_errors_total`.
    pub ledger_errors: Counter,
    /// `gateway_connections_refused_total` (recorded even with `metrics = false`: it is a
    /// protection, not a per-request series).
    pub connections_refused: Counter,
    /// `gateway_allowance_used_ratio`: settled use over amount of each grant, and of each
    /// budget in its current period (recorded even with `metrics = false`, like the next).
    pub allowance_used: Family<AllowanceLabels, Gauge<f64, AtomicU64>>,
    /// `gateway_allowance_threshold_crossings_total`: settlements that took an allowance past
    /// one of `[control_plane] alert_thresholds_percent`, as seen by this replica.
    pub allowance_crossings: Family<CrossingLabels, Counter>,
}

impl RequestMetrics {
    /// Empty families (recording only if `enabled`).
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            requests: Family::default(),
            prompt_tokens: Family::default(),
            completion_tokens: Family::default(),
            rejections: Family::default(),
            time_to_first_token: Family::new_with_constructor(seconds_from_5ms),
            inter_token_latency: Family::new_with_constructor(seconds_from_1ms),
            e2e_latency: Family::new_with_constructor(seconds_from_10ms),
            queue_time: Family::new_with_constructor(seconds_from_5ms),
            ledger_errors: Counter::default(),
            connections_refused: Counter::default(),
            allowance_used: Family::default(),
            allowance_crossings: Family::default(),
        }
    }

    /// Adds every family to `registry` (families are shared handles: clones record into the
    /// same series). Help texts have no final period: the registry adds one.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gateway_requests",
            "Authenticated API requests, by tenant, model and HTTP status",
            self.requests.clone(),
        );
        registry.register(
            "gateway_prompt_tokens",
            "Prompt tokens of admitted requests",
            self.prompt_tokens.clone(),
        );
        registry.register(
            "gateway_completion_tokens",
            "Completion tokens generated (cancelled requests included)",
            self.completion_tokens.clone(),
        );
        registry.register(
            "gateway_rate_limited_requests",
            "Requests refused with 429, by tenant and the limit that refused them",
            self.rejections.clone(),
        );
        registry.register_with_unit(
            "gateway_time_to_first_token",
            "From the request reaching the handler to its first generated token",
            Unit::Seconds,
            self.time_to_first_token.clone(),
        );
        registry.register_with_unit(
            "gateway_inter_token_latency",
            "Gap between consecutive generated tokens of one request",
            Unit::Seconds,
            self.inter_token_latency.clone(),
        );
        registry.register_with_unit(
            "gateway_e2e_request_latency",
            "From the request reaching the handler to its end (completed, cancelled or failed)",
            Unit::Seconds,
            self.e2e_latency.clone(),
        );
        registry.register_with_unit(
            "gateway_queue_time",
            "Time a sequence waited in the engine before it started running",
            Unit::Seconds,
            self.queue_time.clone(),
        );
        registry.register(
            "gateway_ledger_write_errors",
            "Usage records the ledger failed to commit (after retries)",
            self.ledger_errors.clone(),
        );
        registry.register(
            "gateway_connections_refused",
            "Connections closed at once because the gateway held [server] max_connections",
            self.connections_refused.clone(),
        );
        registry.register(
            "gateway_allowance_used_ratio",
            "Settled use over amount of each grant, and each budget in its current period",
            self.allowance_used.clone(),
        );
        registry.register(
            "gateway_allowance_threshold_crossings",
            "Settlements that took a grant or budget past an alert threshold",
            self.allowance_crossings.clone(),
        );
    }

    /// One API request answered with `status`.
    pub fn count_request(&self, tenant: &TenantId, model: &str, status: u16) {
        if self.enabled {
            self.requests
                .get_or_create(&RequestLabels {
                    tenant: tenant.to_string(),
                    model: model.into(),
                    status: status.to_string(),
                })
                .inc();
        }
    }

    /// One request refused by the quota limit `reason`.
    pub fn count_rejection(&self, tenant: &TenantId, reason: &str) {
        if self.enabled {
            self.rejections
                .get_or_create(&RejectionLabels {
                    tenant: tenant.to_string(),
                    reason: reason.into(),
                })
                .inc();
        }
    }

    /// The tokens of one settled request.
    pub fn count_tokens(&self, tenant: &TenantId, model: &str, prompt: u64, completion: u64) {
        if self.enabled {
            let labels = TokenLabels {
                tenant: tenant.to_string(),
                model: model.into(),
            };
            self.prompt_tokens.get_or_create(&labels).inc_by(prompt);
            self.completion_tokens
                .get_or_create(&labels)
                .inc_by(completion);
        }
    }

    /// The latency histograms of one tenant, model and pool, taken once per request (not per
    /// token).
    pub fn latencies(&self, tenant: &TenantId, model: &str, pool: &str) -> Option<LatencyHandles> {
        if !self.enabled {
            return None;
        }
        let labels = LatencyLabels {
            tenant: tenant.to_string(),
            model: model.into(),
            pool: pool.into(),
        };
        Some(LatencyHandles {
            time_to_first_token: self.time_to_first_token.get_or_create(&labels).clone(),
            inter_token_latency: self.inter_token_latency.get_or_create(&labels).clone(),
            e2e_latency: self.e2e_latency.get_or_create(&labels).clone(),
            queue_time: self.queue_time.get_or_create(&labels).clone(),
        })
    }
}

/// One request's histograms (shared handles into the families).
#[derive(Debug, Clone)]
pub struct LatencyHandles {
    /// Time to the first token.
    pub time_to_first_token: Histogram,
    /// Gaps between tokens.
    pub inter_token_latency: Histogram,
    /// Whole request.
    pub e2e_latency: Histogram,
    /// Waiting in the engine.
    pub queue_time: Histogram,
}

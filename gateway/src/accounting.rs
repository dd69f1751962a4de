//! Settling an admitted request, however it ends: the quota learns the real token count, the
//! Prometheus series move, one access-log line is written, and the usage ledger gets the record.
//!
//! A [`RequestAccount`] is created at admission and travels with the response. The response
//! calls [`RequestAccount::settle`] before its last byte (the `[DONE]` event or the JSON body),
//! which waits for the ledger's commit. If the response is dropped first (the client hung up),
//! `Drop` settles it as `cancelled` with the tokens generated so far; the ledger commits that
//! record with its next group.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use engine_api::Completion;
use ledger::{unix_ms_now, Ledger, RecordStatus, UsageRecord};
use opentelemetry::KeyValue;
use policies::{Admission, Priority};

use crate::directory::CurrentDirectory;
use crate::extensions::{Caller, ClientRequestId};
use crate::metrics::{LatencyHandles, RequestMetrics};
use crate::state::AppState;
use crate::store_sync::AllowanceHold;
use crate::telemetry;
use control_plane::Usage;

/// A prompt's tokens as admission billed them: the engine's own count replaces them when it
/// comes (a remote upstream's `usage`).
#[derive(Debug, Clone, Copy)]
pub struct BilledPrompt {
    /// Tokens billed.
    pub tokens: u64,
    /// An estimate (no local engine tokenised the prompt).
    pub estimated: bool,
}

/// One admitted request's bookkeeping. See the module documentation.
pub struct RequestAccount {
    admission: Admission,
    /// Where the price list is (the control-plane store's snapshot): read when the record
    /// closes, for the price in force when the request was admitted.
    directory: Arc<CurrentDirectory>,
    /// Billed at the batch discount (the request ran in the `batch` class).
    batch: bool,
    /// Its reservation against grants and budgets, settled with its real use at the end.
    allowance: Option<AllowanceHold>,
    ledger: Option<Arc<Ledger>>,
    metrics: Arc<RequestMetrics>,
    latencies: Option<LatencyHandles>,
    record: UsageRecord,
    /// The replica that served it (its pool is in `record`).
    replica: Option<Arc<str>>,
    started: Instant,
    last_token: Option<Instant>,
    time_to_first_token: Option<f64>,
    /// The request's span (the HTTP span): fields and engine phases are recorded on it even when
    /// the account settles outside it (a dropped stream).
    span: tracing::Span,
    /// Wall-clock time of submission to the engine, the origin of the engine's phase timings.
    submitted: SystemTime,
    /// Prompts billed at an estimate whose engine has not counted them yet.
    estimated_prompts: usize,
    settled: bool,
}

impl RequestAccount {
    /// Opens the account of an admitted request of `prompts` (as admission billed them), in the
    /// current (the request's) span.
    pub fn new(
        state: &AppState,
        caller: &Caller,
        request_id: &str,
        client_request_id: Option<&ClientRequestId>,
        model: &str,
        prompts: &[BilledPrompt],
        mut admission: Admission,
    ) -> Self {
        let prompt_tokens = prompts
            .iter()
            .fold(0u64, |sum, p| sum.saturating_add(p.tokens));
        // The account opens once the engine took the request: from here it is billed.
        admission.start();
        let span = tracing::Span::current();
        span.record("model", model);
        Self {
            admission,
            directory: state.current_directory().clone(),
            batch: caller.tenant.limits.share.priority == Priority::Batch,
            allowance: None,
            ledger: state.ledger.clone(),
            // Known once the router places the request (`on_routed`).
            latencies: None,
            metrics: state.requests.clone(),
            record: UsageRecord {
                request_id: request_id.to_string(),
                client_request_id: client_request_id.map(|id| id.0.to_string()),
                tenant: caller.tenant.id.clone(),
                project: caller.project.as_deref().map(str::to_string),
                key_id: caller.key_id.to_string(),
                model: model.to_string(),
                pool: String::new(),
                prompt_tokens,
                completion_tokens: 0,
                status: RecordStatus::Cancelled,
                finish_reason: None,
                started_at_ms: unix_ms_now(),
                ended_at_ms: 0,
                prompt_tokens_estimated: false,
                cached_tokens: 0,
                cost_micros: None,
                price_version: None,
                api: None,
                batch_id: None,
                adapter: None,
            },
            replica: None,
            started: Instant::now(),
            last_token: None,
            time_to_first_token: None,
            span,
            submitted: SystemTime::now(),
            estimated_prompts: prompts.iter().filter(|p| p.estimated).count(),
            settled: false,
        }
    }

    /// The request runs with LoRA adapter `adapter` over its model: its record names it.
    pub fn with_adapter(mut self, adapter: Option<String>) -> Self {
        self.record.adapter = adapter;
        self
    }

    /// The router placed the request (again, after a retry) on `pool` and `replica`: the labels
    /// of its record, span and latency series.
    pub fn on_routed(&mut self, pool: &str, replica: &Arc<str>) {
        if self.record.pool != pool {
            self.record.pool = pool.to_string();
            self.latencies = self
                .metrics
                .latencies(&self.record.tenant, &self.record.model, pool);
        }
        self.span.record("pool", pool);
        self.span.record("replica", &**replica);
        self.replica = Some(replica.clone());
    }

    /// The request ends without being served: refused by the upstream as invalid, or no
    /// replica could take it. If no choice generated anything, it charges nothing (its prompt
    /// neither in the record nor in today's usage); otherwise what was generated stands.
    pub fn on_not_served(&mut self) {
        if self.record.completion_tokens == 0 {
            self.record.prompt_tokens = 0;
            self.admission.refund();
        }
    }

    /// The engine is done with one of the request's prompts, `billed` at admission: its own
    /// count, if it has one (`None`: an upstream that reports no usage), replaces the billed
    /// tokens in the record and in the tenant's quota counters. While an estimated prompt has
    /// not been counted, the record says its prompt tokens are an estimate.
    pub fn on_prompt_counted(&mut self, billed: BilledPrompt, counted: Option<u64>) {
        let Some(counted) = counted else { return };
        if billed.estimated {
            self.estimated_prompts = self.estimated_prompts.saturating_sub(1);
        }
        if counted != billed.tokens {
            self.record.prompt_tokens =
                self.record.prompt_tokens.saturating_sub(billed.tokens) + counted;
            self.admission.correct_prompt_tokens(billed.tokens, counted);
        }
    }

    /// A token was generated (of any choice): billed even if the client leaves after it.
    pub fn on_token(&mut self) {
        let now = Instant::now();
        self.record.completion_tokens += 1;
        self.admission.record_completion_tokens(1);
        match self.last_token {
            None => {
                let ttft = (now - self.started).as_secs_f64();
                self.time_to_first_token = Some(ttft);
                if let Some(h) = &self.latencies {
                    h.time_to_first_token.observe(ttft);
                }
            }
            Some(previous) => {
                if let Some(h) = &self.latencies {
                    h.inter_token_latency
                        .observe((now - previous).as_secs_f64());
                }
            }
        }
        self.last_token = Some(now);
    }

    /// The request ran in `priority` (the tenant's class, or lower if the request asked):
    /// the `batch` class is billed at the price's batch discount.
    pub fn billed_as(mut self, priority: Priority) -> Self {
        self.batch = priority == Priority::Batch;
        self
    }

    /// The request came through `api` (its record says so).
    pub fn through(mut self, api: ledger::Api) -> Self {
        self.record.api = Some(api);
        self
    }

    /// The request is a line of batch `batch_id` (its record says so).
    pub fn in_batch(mut self, batch_id: &str) -> Self {
        self.record.batch_id = Some(batch_id.to_string());
        self
    }

    /// The request's reservation against grants and budgets, to settle when it ends.
    pub fn holding(mut self, allowance: Option<AllowanceHold>) -> Self {
        self.allowance = allowance;
        self
    }

    /// A choice finished in the engine.
    pub fn on_finished(&mut self, completion: &Completion) {
        self.record.cached_tokens += completion.usage.cached_tokens as u64;
        self.record.finish_reason = Some(completion.finish_reason.as_str().to_string());
        let timing = &completion.timing;
        if let Some(h) = &self.latencies {
            h.queue_time.observe(timing.queue.as_secs_f64());
        }
        // The engine's phases as child spans of the request, placed by the engine's timings.
        let queued_until = self.submitted + timing.queue;
        let first_token = self.submitted + timing.time_to_first_token.max(timing.queue);
        let prefill_attributes = vec![
            KeyValue::new("prompt_tokens", completion.usage.prompt_tokens as i64),
            KeyValue::new("compute_ms", timing.prefill.as_secs_f64() * 1e3),
        ];
        let decode_attributes = vec![
            KeyValue::new(
                "completion_tokens",
                completion.usage.completion_tokens as i64,
            ),
            KeyValue::new("decode_steps", timing.decode_steps as i64),
            KeyValue::new("finish_reason", completion.finish_reason.as_str()),
        ];
        let span = &self.span;
        telemetry::record_phase(span, "queue", self.submitted, queued_until, Vec::new());
        telemetry::record_phase(
            span,
            "prefill",
            queued_until,
            first_token,
            prefill_attributes,
        );
        telemetry::record_phase(
            span,
            "decode",
            first_token,
            SystemTime::now(),
            decode_attributes,
        );
    }

    /// Settles the request as `status` and waits for the ledger's commit. The caller sends its
    /// last byte after this returns.
    ///
    /// A reservation against grants and budgets is settled first, and waited for: if the
    /// process dies between the two, the allowance has counted the request and the ledger has
    /// not (an allowance may over-count in a crash, never under-count and be overdrawn).
    pub async fn settle(mut self, status: RecordStatus) {
        let record = self.close(status);
        if let Some(hold) = self.allowance.take() {
            hold.settle_and_wait(Self::allowance_use(&record)).await;
        }
        if let Some(ledger) = self.ledger.clone() {
            if let Err(e) = ledger.append(record).await {
                self.metrics.ledger_errors.inc();
                tracing::error!(error = %e, "usage record not committed");
            }
        }
    }

    /// Marks the request settled and does everything that does not wait: metrics, log line.
    fn close(&mut self, status: RecordStatus) -> UsageRecord {
        self.settled = true;
        self.record.status = status;
        self.record.prompt_tokens_estimated =
            self.estimated_prompts > 0 && self.record.prompt_tokens > 0;
        self.record.ended_at_ms = unix_ms_now();
        self.price();
        let e2e = self.started.elapsed().as_secs_f64();
        if let Some(h) = &self.latencies {
            h.e2e_latency.observe(e2e);
        }
        let r = &self.record;
        self.span.record("prompt_tokens", r.prompt_tokens);
        self.span.record("completion_tokens", r.completion_tokens);
        self.span
            .record("finish_reason", r.finish_reason.as_deref().unwrap_or(""));
        self.span.record("outcome", r.status.as_str());
        // Series by the name the request used: an adapter's tokens are the adapter's, as its
        // requests are (`model` label).
        let named = r.adapter.as_deref().unwrap_or(&r.model);
        self.metrics
            .count_tokens(&r.tenant, named, r.prompt_tokens, r.completion_tokens);
        tracing::info!(
            target: "gateway::access",
            request_id = %r.request_id,
            tenant = %r.tenant,
            key_id = %r.key_id,
            model = %r.model,
            pool = %r.pool,
            replica = self.replica.as_deref().unwrap_or(""),
            status = r.status.as_str(),
            finish_reason = r.finish_reason.as_deref().unwrap_or(""),
            prompt_tokens = r.prompt_tokens,
            completion_tokens = r.completion_tokens,
            ttft_ms = self.time_to_first_token.map_or(-1.0, |s| s * 1e3),
            e2e_ms = e2e * 1e3,
            "request finished"
        );
        self.record.clone()
    }
}

impl RequestAccount {
    /// What a finished request used of its grants and budgets.
    fn allowance_use(record: &UsageRecord) -> Usage {
        Usage {
            tokens: record.total_tokens().min(i64::MAX as u64) as i64,
            micros: record.cost_micros.unwrap_or(0),
        }
    }

    /// Prices the record at the model's price in force when the request was admitted (none:
    /// no cost, no version).
    fn price(&mut self) {
        let directory = self.directory.get();
        let r = &mut self.record;
        let price = directory
            .snapshot
            .as_ref()
            .and_then(|s| s.price_at(&r.model, r.started_at_ms));
        if let Some(price) = price {
            r.cost_micros = Some(price.cost_micros(
                r.prompt_tokens,
                r.cached_tokens,
                r.completion_tokens,
                self.batch,
            ));
            r.price_version = Some(price.version.clone());
        }
    }
}

impl Drop for RequestAccount {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let record = self.close(RecordStatus::Cancelled);
        if let Some(hold) = self.allowance.take() {
            // Dropped (a client gone mid-stream): settled on a task, not waited for.
            hold.settle(Self::allowance_use(&record));
        }
        if let Some(ledger) = &self.ledger {
            if let Err(e) = ledger.append_detached(record) {
                self.metrics.ledger_errors.inc();
                tracing::error!(error = %e, "usage record of a cancelled request not queued");
            }
        }
    }
}

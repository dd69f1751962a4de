//! Running batches: every replica looks for open batches in the control-plane store and runs
//! those it can take the lease of, one replica per batch; a replica that stops renewing (killed,
//! cut off) leaves its batches to another once their lease runs out.
//!
//! A batch's lines go through the same pipeline as a client's requests (authentication's
//! result: the key that made the batch, if it is still valid; quotas; grants; the ledger),
//! in the `batch` priority class: the engines serve interactive work first, preempt and shed
//! batch work first, and share what is left fairly across tenants. A line refused for a
//! passing reason (a rate limit, a full queue, no replica free) waits and tries again; any
//! other answer is its result. Each result is stored as it comes, so a batch taken over runs
//! only the lines without one; a line is billed once whatever happens (the ledger keys its
//! record by the batch and its `custom_id`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::batches::{self, CANCEL_KIND, KIND, LINE_KIND};
use super::files;
use super::generation::handlers::serve_internal;
use super::pipeline::Incoming;
use crate::extensions::Caller;
use crate::openai::batches::{
    parse_batch_input, result_line, status, unrun_line, BatchLine, StoredBatch, StoredFile,
};
use crate::openai::response::Endpoint;
use crate::state::AppState;
use crate::store_sync::StoreSync;

/// The error codes of refusals that pass: the line waits and tries again.
const PASSING: [&str; 6] = [
    "rate_limit_exceeded",
    "queue_full",
    "overloaded",
    "no_replica_available",
    "model_not_ready",
    "quota_store_unavailable",
];

/// Starts looking for batches to run, if the gateway has a control-plane store.
pub fn spawn(state: AppState) {
    let Some(store) = state.store().cloned() else {
        return;
    };
    let owner = format!("replica-{}", uuid::Uuid::new_v4().simple());
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let every = Duration::from_millis(state.limits.batches.poll_interval_ms.max(50));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = control_plane::now_ms();
            let Ok(open) = store
                .call(move |s| s.api_objects(KIND, None, "batch_", now))
                .await
            else {
                continue;
            };
            for object in open {
                let Ok(batch) = serde_json::from_str::<StoredBatch>(&object.body) else {
                    continue;
                };
                if !status::is_open(batch.status()) || running.lock().unwrap().contains(&object.id)
                {
                    continue;
                }
                let lease = Lease::new(&state, &store, &object.id, &owner);
                if !lease.renew().await {
                    continue;
                }
                running.lock().unwrap().insert(object.id.clone());
                let (state, running) = (state.clone(), running.clone());
                tokio::spawn(async move {
                    let id = object.id.clone();
                    run(&state, lease, object.tenant, batch).await;
                    running.lock().unwrap().remove(&id);
                });
            }
        }
    });
}

/// This replica's hold on one batch.
#[derive(Clone)]
struct Lease {
    store: Arc<StoreSync>,
    id: String,
    owner: String,
    length: Duration,
    /// Set once a renewal failed: another replica may have the batch now.
    lost: Arc<AtomicBool>,
}

impl Lease {
    fn new(state: &AppState, store: &Arc<StoreSync>, id: &str, owner: &str) -> Self {
        Self {
            store: store.clone(),
            id: id.to_string(),
            owner: owner.to_string(),
            length: Duration::from_secs(state.limits.batches.lease_secs.max(1)),
            lost: Arc::default(),
        }
    }

    /// Takes or extends the lease; `false` (and lost for good) if another holds it.
    async fn renew(&self) -> bool {
        let (id, owner) = (self.id.clone(), self.owner.clone());
        let length = self.length.as_millis() as i64;
        let held = self
            .store
            .call(move |s| s.claim_api_object(KIND, &id, &owner, control_plane::now_ms(), length))
            .await
            .unwrap_or(false);
        if !held {
            self.lost.store(true, Ordering::Relaxed);
        }
        held
    }

    fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Renews the lease every third of it until `done` is set.
    fn keep_renewed(&self, done: Arc<AtomicBool>) {
        let lease = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease.length / 3);
            tick.tick().await;
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                if done.load(Ordering::Relaxed) || !lease.renew().await {
                    break;
                }
            }
        });
    }

    async fn release(&self) {
        let (id, owner) = (self.id.clone(), self.owner.clone());
        let _ = self
            .store
            .call(move |s| s.release_api_object(KIND, &id, &owner))
            .await;
    }
}

/// Why the lines stopped before all ran.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Cancelled,
    Expired,
}

/// Runs one batch to its end (or until its lease is lost).
async fn run(state: &AppState, lease: Lease, tenant: String, mut batch: StoredBatch) {
    let done = Arc::new(AtomicBool::new(false));
    lease.keep_renewed(done.clone());
    let store = lease.store.clone();
    let id = batch.id().to_string();
    tracing::info!(batch = %id, %tenant, "running a batch");
    let outcome = run_lines(state, &lease, &tenant, &mut batch).await;
    if !lease.lost() {
        match outcome {
            Ok(ran) => finish(state, &store, &tenant, &mut batch, ran).await,
            Err(reason) => {
                tracing::warn!(batch = %id, %reason, "a batch failed");
                let now = control_plane::now_ms() / 1000;
                batch.object["status"] = json!(status::FAILED);
                batch.object["failed_at"] = json!(now);
                batch.object["errors"] = json!({"object": "list", "data": [{"code": "batch_failed", "message": reason, "line": null, "param": null}]});
                let _ = batches::put(&store, &tenant, &batch).await;
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    lease.release().await;
}

/// What running a batch's lines came to.
struct Ran {
    /// Why the lines stopped before all ran, if they did.
    stop: Option<Stop>,
    /// Every line's `custom_id`, in the file's order.
    custom_ids: Vec<String>,
}

/// Runs every line without a result, `concurrency` at a time; stops at a cancel, the end of
/// the completion window, or a lost lease.
async fn run_lines(
    state: &AppState,
    lease: &Lease,
    tenant: &str,
    batch: &mut StoredBatch,
) -> Result<Ran, String> {
    let store = &lease.store;
    let id = batch.id().to_string();
    let input_id = batch.object["input_file_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let file: StoredFile = files::load(state, tenant, &input_id)
        .await
        .map_err(|e| e.message)?
        .ok_or_else(|| format!("the input file `{input_id}` is gone"))?;
    let lines = parse_batch_input(&file.content, usize::MAX).map_err(|e| e.message)?;
    let custom_ids = lines.iter().map(|l| l.custom_id.clone()).collect();
    let caller = state
        .directory()
        .resolve_key_id(&batch.key_id)
        .map(Caller::new)
        .ok_or_else(|| "the key that made the batch was revoked or expired".to_string())?;
    if batch.status() == status::VALIDATING {
        batch.object["status"] = json!(status::IN_PROGRESS);
        batch.object["in_progress_at"] = json!(control_plane::now_ms() / 1000);
        batches::put(store, tenant, batch)
            .await
            .map_err(|e| e.message)?;
    }
    let results = line_results(store, tenant, &id).await?;
    tracing::debug!(batch = %id, answered = results.len(), "lines answered before this run");
    let done: HashSet<usize> = results.iter().map(|(i, _)| *i).collect();
    let failed = results.iter().filter(|(_, ok)| !ok).count();
    let counts = Arc::new(Mutex::new((done.len() - failed, failed)));
    let endpoint = match batch.object["endpoint"].as_str() {
        Some("/v1/completions") => Endpoint::Completions,
        _ => Endpoint::Chat,
    };
    let expires_ms = batch.object["expires_at"]
        .as_i64()
        .unwrap_or(i64::MAX / 1000)
        * 1000;
    let permits = Arc::new(tokio::sync::Semaphore::new(
        state.limits.batches.concurrency.max(1),
    ));
    let mut running = tokio::task::JoinSet::new();
    let mut stop = None;
    let mut last_progress = std::time::Instant::now();
    for (index, line) in lines.into_iter().enumerate() {
        if done.contains(&index) {
            continue;
        }
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        stop = stopped(store, tenant, &id, expires_ms).await;
        if stop.is_some() || lease.lost() {
            break;
        }
        tracing::debug!(batch = %id, line = index, "running a line");
        if last_progress.elapsed() > Duration::from_secs(1) {
            last_progress = std::time::Instant::now();
            progress(store, tenant, batch, &counts).await;
        }
        let (state, caller, lease, counts) =
            (state.clone(), caller.clone(), lease.clone(), counts.clone());
        let (tenant, id) = (tenant.to_string(), id.clone());
        running.spawn(async move {
            let _permit = permit;
            let Some((status_code, body)) =
                run_line(&state, &caller, &lease, &id, &line, endpoint, expires_ms).await
            else {
                return;
            };
            let ok = status_code < 300;
            let result = json!({
                "index": index, "ok": ok,
                "line": result_line(&line.custom_id, &line.custom_id, status_code, body),
            });
            let object = control_plane::ApiObject {
                kind: LINE_KIND.into(),
                id: format!("{id}:{index:08}"),
                tenant,
                created_ms: control_plane::now_ms(),
                expires_ms: None,
                body: result.to_string(),
            };
            if lease
                .store
                .call(move |s| s.put_api_object(&object))
                .await
                .is_ok()
            {
                let mut counts = counts.lock().unwrap();
                match ok {
                    true => counts.0 += 1,
                    false => counts.1 += 1,
                }
            }
        });
    }
    while running.join_next().await.is_some() {}
    // A lost lease leaves the batch to its new holder (`run` does not finish it).
    if !lease.lost() {
        progress(store, tenant, batch, &counts).await;
    }
    Ok(Ran { stop, custom_ids })
}

/// Whether the batch was cancelled or its window ran out.
async fn stopped(store: &StoreSync, tenant: &str, id: &str, expires_ms: i64) -> Option<Stop> {
    let now = control_plane::now_ms();
    if now >= expires_ms {
        return Some(Stop::Expired);
    }
    let (tenant, id) = (tenant.to_string(), id.to_string());
    let cancelled = store
        .call(move |s| s.api_object(CANCEL_KIND, &tenant, &id, now))
        .await
        .ok()
        .flatten()
        .is_some();
    cancelled.then_some(Stop::Cancelled)
}

/// Writes the batch's counts so far.
async fn progress(
    store: &StoreSync,
    tenant: &str,
    batch: &mut StoredBatch,
    counts: &Mutex<(usize, usize)>,
) {
    let (completed, failed) = *counts.lock().unwrap();
    batch.object["request_counts"]["completed"] = json!(completed);
    batch.object["request_counts"]["failed"] = json!(failed);
    let _ = batches::put(store, tenant, batch).await;
}

/// The results stored so far: `(line index, answered with success)`.
async fn line_results(
    store: &StoreSync,
    tenant: &str,
    id: &str,
) -> Result<Vec<(usize, bool)>, String> {
    Ok(stored_lines(store, tenant, id)
        .await?
        .iter()
        .map(|v| (v["index"].as_u64().unwrap_or(0) as usize, v["ok"] == true))
        .collect())
}

/// Every stored line result of batch `id`, in line order.
async fn stored_lines(store: &StoreSync, tenant: &str, id: &str) -> Result<Vec<Value>, String> {
    let (tenant, prefix) = (tenant.to_string(), format!("{id}:"));
    let objects = store
        .call(move |s| s.api_objects(LINE_KIND, Some(&tenant), &prefix, 0))
        .await
        .map_err(|e| e.to_string())?;
    let mut lines: Vec<Value> = objects
        .iter()
        .filter_map(|o| serde_json::from_str(&o.body).ok())
        .collect();
    lines.sort_by_key(|v: &Value| v["index"].as_u64());
    Ok(lines)
}

/// Runs one line until it has an answer; `None` if the batch stopped (lease lost, window
/// ended) while it waited to try again.
async fn run_line(
    state: &AppState,
    caller: &Caller,
    lease: &Lease,
    batch_id: &str,
    line: &BatchLine,
    endpoint: Endpoint,
    expires_ms: i64,
) -> Option<(u16, Value)> {
    let mut body = line.body.clone();
    // Backfill: the lowest class (a request may lower its key's class, never raise it).
    body["priority"] = json!("batch");
    let body = Bytes::from(serde_json::to_vec(&body).expect("JSON serialises"));
    loop {
        // Read afresh at every try: the model a line names may have been loading at the last
        // one (a replica takes batches over while it starts), or reloaded since.
        let incoming = match Incoming::internal(
            state,
            caller.clone(),
            line.custom_id.clone(),
            body.clone(),
            batch_id.to_string(),
        ) {
            Ok(incoming) => incoming,
            Err(error) => {
                return Some((
                    error.status.as_u16(),
                    serde_json::from_str(&error.to_json()).unwrap_or_default(),
                ))
            }
        };
        let response = serve_internal(state, endpoint, &incoming).await;
        let status = response.status();
        let wait = response
            .headers()
            .get(axum::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1);
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
        let passing = (status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::SERVICE_UNAVAILABLE)
            && body["error"]["code"]
                .as_str()
                .is_some_and(|code| PASSING.contains(&code));
        if !passing {
            return Some((status.as_u16(), body));
        }
        tracing::debug!(batch = batch_id, custom_id = %line.custom_id, %status, code = %body["error"]["code"], "a line waits to try again");
        tokio::time::sleep(Duration::from_secs(wait.clamp(1, 30))).await;
        if lease.lost() || control_plane::now_ms() >= expires_ms {
            return None;
        }
    }
}

/// Writes the output and error files and ends the batch: `completed`, or `cancelled` /
/// `expired` with the results so far (lines that did not run, of `ran.custom_ids`, are in the
/// error file).
async fn finish(
    state: &AppState,
    store: &StoreSync,
    tenant: &str,
    batch: &mut StoredBatch,
    ran: Ran,
) {
    let Ran { stop, custom_ids } = ran;
    let id = batch.id().to_string();
    let now = control_plane::now_ms() / 1000;
    batch.object["status"] = json!(status::FINALIZING);
    batch.object["finalizing_at"] = json!(now);
    let _ = batches::put(store, tenant, batch).await;
    let Ok(results) = stored_lines(store, tenant, &id).await else {
        return;
    };
    let (mut output, mut errors) = (String::new(), String::new());
    let mut answered = HashSet::new();
    for result in &results {
        answered.insert(
            result["line"]["custom_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        let text = format!("{}\n", result["line"]);
        match result["ok"] == true {
            true => output.push_str(&text),
            false => errors.push_str(&text),
        }
    }
    if let Some(stop) = stop {
        let (code, message) = match stop {
            Stop::Cancelled => (
                "batch_cancelled",
                "The batch was cancelled before this request ran.",
            ),
            Stop::Expired => (
                "batch_expired",
                "The batch's completion window ended before this request ran.",
            ),
        };
        for custom_id in custom_ids.iter().filter(|c| !answered.contains(*c)) {
            errors.push_str(&format!("{}\n", unrun_line(custom_id, code, message)));
        }
    }
    for (content, field, name) in [
        (output, "output_file_id", "output"),
        (errors, "error_file_id", "errors"),
    ] {
        if content.is_empty() {
            continue;
        }
        let file = files::new_file(state, format!("{id}_{name}.jsonl"), "batch_output", content);
        // Results are kept whatever the tenant's storage holds: they were paid for.
        let object = files::stored_object(tenant, &file);
        if store
            .call(move |s| s.put_api_object(&object))
            .await
            .is_err()
        {
            // The lease is given back with the batch still `finalizing`: a replica will
            // finish it again.
            return;
        }
        batch.object[field] = json!(file.id);
    }
    let now = control_plane::now_ms() / 1000;
    let (state_name, at) = match stop {
        None => (status::COMPLETED, "completed_at"),
        Some(Stop::Cancelled) => (status::CANCELLED, "cancelled_at"),
        Some(Stop::Expired) => (status::EXPIRED, "expired_at"),
    };
    batch.object["status"] = json!(state_name);
    batch.object[at] = json!(now);
    let _ = batches::put(store, tenant, batch).await;
    tracing::info!(batch = %id, status = state_name, "batch ended");
}

//! Pools and routing with real processes on loopback: a gateway, `engine-worker` processes, a
//! worker killed mid-run and started again, dead upstreams, and load balancing.
//!
//! The first test runs the real model everywhere. The others run `synthetic` workers: they pace
//! tokens at a fixed rate, which makes "mid-run" and "concurrent" deterministic on a 2-core
//! machine; everything under test (HTTP, SSE relaying, routing, breakers, retries) is the real
//! code path, only the token source differs.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{digest, Options, TestGateway, MODEL};
use serde_json::{json, Value};

const STANDARD_KEY: &str = "sk-standard-tenant-key";
const PREMIUM_KEY: &str = "sk-premium-tenant-key";
const ADMIN_KEY: &str = "sk-pools-admin-key";

/// Generous bound so that a broken breaker fails the test instead of hanging it.
const RECOVERY_BOUND: Duration = Duration::from_secs(60);

fn tenants() -> String {
    format!(
        r#"
admin_keys = ["{admin}"]

[[tenants]]
id = "standard"
keys = ["{standard}"]

[[tenants]]
id = "premium"
keys = ["{premium}"]
tier = "premium"
"#,
        admin = digest(ADMIN_KEY),
        standard = digest(STANDARD_KEY),
        premium = digest(PREMIUM_KEY),
    )
}

const SYNTHETIC_WORKER: &str = r#"
[[models]]
id = "syn"
kind = "synthetic"
[models.synthetic]
tokens_per_second = 40
"#;

fn synthetic_worker(listen: Option<String>) -> TestGateway {
    TestGateway::start(Options {
        config: Some(SYNTHETIC_WORKER),
        model_flag: false,
        worker: true,
        listen,
        ..Options::default()
    })
}

fn start_gateway(config: &str) -> TestGateway {
    TestGateway::start(Options {
        config: Some(config),
        model_flag: false,
        ..Options::default()
    })
}

/// A gateway whose model `syn` is served by the remote pool `workers` at `urls`, for the
/// standard tenant. `routing` and `pool_settings` are extra TOML lines of `[routing]` and of
/// the pool.
fn gateway_over_workers(urls: &[&str], routing: &str, pool_settings: &str) -> TestGateway {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    let config = format!(
        r#"{tenants}
[routing]
{routing}

[[pools]]
name = "workers"
kind = "remote"
urls = [{urls}]
api_key_env = "WORKER_SECRET"
{pool_settings}

[[models]]
id = "syn"
kind = "synthetic"
pools = ["workers"]
[models.synthetic]
"#,
        tenants = tenants(),
        urls = urls.join(", "),
    );
    let mut gateway = start_gateway(&config);
    gateway.key = STANDARD_KEY.to_string();
    gateway
}

/// `(pool, replica) -> snapshot` from `/admin/pools`.
async fn replicas(gateway: &TestGateway) -> HashMap<(String, String), Value> {
    let (status, body) = gateway.get("/admin/pools", Some(ADMIN_KEY)).await;
    assert_eq!(status, 200, "{body}");
    let mut out = HashMap::new();
    for pool in body["data"].as_array().unwrap() {
        for replica in pool["replicas"].as_array().unwrap() {
            let key = (
                pool["pool"].as_str().unwrap().to_string(),
                replica["name"].as_str().unwrap().to_string(),
            );
            out.insert(key, replica.clone());
        }
    }
    out
}

async fn routed(gateway: &TestGateway, pool: &str, replica: &str) -> u64 {
    replicas(gateway).await[&(pool.to_string(), replica.to_string())]["routed"]
        .as_u64()
        .unwrap()
}

/// Polls `/admin/pools` until `replica` shows `health`.
async fn wait_health(gateway: &TestGateway, pool: &str, replica: &str, health: &str) {
    let started = Instant::now();
    loop {
        let all = replicas(gateway).await;
        if all[&(pool.to_string(), replica.to_string())]["health"] == health {
            return;
        }
        assert!(
            started.elapsed() < RECOVERY_BOUND,
            "{replica} never became {health}: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback address nothing listens on.
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

fn chat(max_tokens: usize) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

#[tokio::test]
async fn local_and_remote_pools_serve_the_same_model_and_tiers_route() {
    let workers: Vec<TestGateway> = (0..2)
        .map(|_| {
            TestGateway::start(Options {
                worker: true,
                ..Options::default()
            })
        })
        .collect();
    let model_path = common::model_path();
    let config = format!(
        r#"{tenants}
[[pools]]
name = "cpu-local"
kind = "local"
devices = ["cpu"]

[[pools]]
name = "workers"
kind = "remote"
urls = ["{w0}", "{w1}"]
api_key_env = "WORKER_SECRET"

[[models]]
id = "{MODEL}"
path = "{path}"
pools = ["cpu-local", "workers"]
tiers = {{ premium = ["workers", "cpu-local"] }}
"#,
        tenants = tenants(),
        w0 = workers[0].base,
        w1 = workers[1].base,
        path = model_path.display(),
    );
    let gateway = start_gateway(&config);

    // The worker itself speaks the OpenAI API behind its secret, and reports its load.
    let (status, _) = workers[0]
        .post_raw(
            "/v1/chat/completions",
            chat(4).to_string(),
            Some("wrong-secret"),
        )
        .await;
    assert_eq!(status, 401);
    let (status, load) = workers[0].get("/load", Some(common::WORKER_SECRET)).await;
    assert_eq!(status, 200);
    assert_eq!(load["models"][0]["model"], MODEL);
    assert!(load["models"][0]["kv_blocks_total"].as_u64().unwrap() > 0);

    let (status, standard) = gateway
        .post_raw(
            "/v1/chat/completions",
            chat(12).to_string(),
            Some(STANDARD_KEY),
        )
        .await;
    assert_eq!(status, 200, "{standard}");
    let (status, premium) = gateway
        .post_raw(
            "/v1/chat/completions",
            chat(12).to_string(),
            Some(PREMIUM_KEY),
        )
        .await;
    assert_eq!(status, 200, "{premium}");

    // Same model, same weights, greedy: the same answer and usage through either pool.
    let text = |v: &Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(!text(&standard).is_empty());
    assert_eq!(text(&standard), text(&premium));
    assert_eq!(standard["usage"], premium["usage"]);

    // The standard tier stayed on the local pool, the premium tier went to a worker.
    let all = replicas(&gateway).await;
    let count = |pool: &str| -> u64 {
        all.iter()
            .filter(|((p, _), _)| p == pool)
            .map(|(_, r)| r["routed"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(count("cpu-local"), 1, "{all:?}");
    assert_eq!(count("workers"), 1, "{all:?}");

    // Streaming through a worker: tokens relayed one by one, usage from the upstream.
    let mut premium_gateway = gateway;
    premium_gateway.key = PREMIUM_KEY.to_string();
    let mut body = chat(12);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = premium_gateway.stream("/v1/chat/completions", body).await;
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text(&standard));
    let usage = &events[events.len() - 2]["usage"];
    for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage[count], standard["usage"][count], "{count}");
    }
    // The same prompt went to the same worker again (placement by prefix), whose prefix cache
    // had it: the upstream's cached tokens come through.
    assert!(
        usage["prompt_tokens_details"]["cached_tokens"].as_u64() > Some(0),
        "{usage}"
    );
    assert_eq!(events.last().unwrap(), "[DONE]");

    // The ledger labels each record with the pool that served it.
    let (status, records) = premium_gateway
        .get("/admin/usage/records", Some(ADMIN_KEY))
        .await;
    assert_eq!(status, 200);
    let pools: Vec<(&str, &str)> = records["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["tenant"].as_str().unwrap(), r["pool"].as_str().unwrap()))
        .collect();
    assert_eq!(
        pools
            .iter()
            .filter(|p| **p == ("standard", "cpu-local"))
            .count(),
        1
    );
    assert_eq!(
        pools
            .iter()
            .filter(|p| **p == ("premium", "workers"))
            .count(),
        2
    );
}

/// A stream's outcome: finished normally, or ended with an error event. Either way `[DONE]`
/// closes it (never a silently truncated answer).
async fn stream_outcome(gateway: &TestGateway, max_tokens: usize) -> Result<usize, String> {
    let body = json!({"model": "syn", "prompt": "one two three", "max_tokens": max_tokens, "stream": true});
    let events = tokio::time::timeout(RECOVERY_BOUND, gateway.stream("/v1/completions", body))
        .await
        .expect("a stream hung");
    assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}");
    let last = &events[events.len() - 2];
    if let Some(error) = last.get("error") {
        return Err(error["message"].as_str().unwrap().to_string());
    }
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{events:?}");
    Ok(events.len() - 2)
}

#[tokio::test]
async fn killing_a_worker_mid_run_fails_over_and_it_is_used_again_when_back() {
    let mut a = synthetic_worker(None);
    let b = synthetic_worker(None);
    let a_address = a.base.trim_start_matches("http://").to_string();
    let gateway = gateway_over_workers(
        &[&a.base, &b.base],
        "health_interval_ms = 100",
        "failure_threshold = 2\nopen_ms = 300",
    );

    // Eight 3-second streams spread over both workers; A dies while all of them stream.
    let streams: Vec<_> = (0..8).map(|_| stream_outcome(&gateway, 120)).collect();
    let kill = async {
        loop {
            let all = replicas(&gateway).await;
            let in_flight = |name: &str| {
                all[&("workers".to_string(), name.to_string())]["in_flight"]
                    .as_u64()
                    .unwrap()
            };
            if in_flight(&a.base) + in_flight(&b.base) == 8 {
                assert!(in_flight(&a.base) >= 1, "{all:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let tokens flow first: before its first token a request would be retried, not failed.
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.kill_now();
    };
    let (outcomes, ()) = tokio::join!(futures::future::join_all(streams), kill);
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    let finished = outcomes.iter().filter(|o| o.is_ok()).count();
    assert!(
        !failed.is_empty(),
        "the streams on the killed worker must fail"
    );
    assert!(finished >= 1, "the streams on the other worker must finish");
    // The error event is generic: the worker's address stays in the gateway's log (issue 14,
    // item 7; it used to be sent to the tenant).
    for message in failed {
        assert!(!message.contains(&a_address), "{message}");
        assert!(message.contains("Generation failed"), "{message}");
    }

    // New requests go to B (directly once A is out; retried from A before it is).
    wait_health(&gateway, "workers", &a.base, "unhealthy").await;
    let b_before = routed(&gateway, "workers", &b.base).await;
    for _ in 0..4 {
        assert_eq!(stream_outcome(&gateway, 4).await, Ok(4));
    }
    assert_eq!(routed(&gateway, "workers", &b.base).await, b_before + 4);

    // A comes back on the same port: the health checks put it back, and it gets requests.
    let a_back = synthetic_worker(Some(a_address));
    assert_eq!(a_back.base, a.base);
    wait_health(&gateway, "workers", &a.base, "healthy").await;
    let a_before = routed(&gateway, "workers", &a.base).await;
    let again: Vec<_> = (0..6).map(|_| stream_outcome(&gateway, 20)).collect();
    for outcome in futures::future::join_all(again).await {
        assert_eq!(outcome, Ok(20));
    }
    assert!(routed(&gateway, "workers", &a.base).await > a_before);
}

/// Stops (SIGSTOP) or resumes (SIGCONT) a process: a hung worker, not a dead one. Its
/// listening socket still accepts connections; nothing answers.
fn signal(worker: &TestGateway, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &worker.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Pool settings for the stall tests: stalls detected after 1 s; other failures never take a
/// replica out (a threshold of 1000) and health checks never run, so that only passive stall
/// detection can mark the hung worker.
const STALL_SETTINGS: &str = "first_token_timeout_ms = 1000\ninter_token_timeout_ms = 1000\nfailure_threshold = 1000\nopen_ms = 600000";
const NO_HEALTH_CHECKS: &str = "health_interval_ms = 600000";

async fn assert_stalled(gateway: &TestGateway, worker: &TestGateway) {
    let all = replicas(gateway).await;
    let replica = &all[&("workers".to_string(), worker.base.clone())];
    assert_eq!(replica["health"], "unhealthy", "{replica}");
    assert!(replica["stalls"].as_u64().unwrap() >= 1, "{replica}");
    assert!(
        replica["last_error"]
            .as_str()
            .unwrap()
            .contains("produced nothing"),
        "{replica}"
    );
    let metrics = gateway.metrics_text().await;
    let stalls = format!(
        r#"gateway_replica_stalls_total{{model="syn",pool="workers",replica="{}"}}"#,
        worker.base
    );
    assert!(metrics.contains(&stalls), "{stalls} missing");
}

#[tokio::test]
async fn requests_sent_to_a_hung_worker_fail_over_and_it_is_taken_out_at_once() {
    let a = synthetic_worker(None);
    let b = synthetic_worker(None);
    let gateway = gateway_over_workers(&[&a.base, &b.base], NO_HEALTH_CHECKS, STALL_SETTINGS);
    assert_eq!(stream_outcome(&gateway, 2).await, Ok(2), "warm-up");
    signal(&a, "-STOP");

    // Concurrent requests spread over both: those placed on A hear nothing, fail over to B
    // after the first-token stall timeout, and finish there.
    let a_before = routed(&gateway, "workers", &a.base).await;
    let requests: Vec<_> = (0..6).map(|_| stream_outcome(&gateway, 4)).collect();
    for outcome in futures::future::join_all(requests).await {
        assert_eq!(outcome, Ok(4));
    }
    assert!(
        routed(&gateway, "workers", &a.base).await > a_before,
        "some requests must have been placed on the hung worker for this test to mean anything"
    );
    assert_stalled(&gateway, &a).await;

    // Out at once: new requests go straight to B.
    let a_out = routed(&gateway, "workers", &a.base).await;
    for _ in 0..4 {
        assert_eq!(stream_outcome(&gateway, 2).await, Ok(2));
    }
    assert_eq!(routed(&gateway, "workers", &a.base).await, a_out);
    signal(&a, "-CONT");
}

#[tokio::test]
async fn streams_on_a_worker_that_hangs_mid_stream_end_with_an_error_instead_of_hanging() {
    let a = synthetic_worker(None);
    let b = synthetic_worker(None);
    // The transport's own idle timeout above the test's bound: only the stall watch can end
    // the streams on A in time.
    let settings = format!("{STALL_SETTINGS}\nidle_timeout_ms = 120000");
    let gateway = gateway_over_workers(&[&a.base, &b.base], NO_HEALTH_CHECKS, &settings);

    // Eight 3-second streams over both workers; A hangs while they stream.
    let streams: Vec<_> = (0..8).map(|_| stream_outcome(&gateway, 120)).collect();
    let stop = async {
        loop {
            let all = replicas(&gateway).await;
            let in_flight = |worker: &TestGateway| {
                all[&("workers".to_string(), worker.base.clone())]["in_flight"]
                    .as_u64()
                    .unwrap()
            };
            if in_flight(&a) + in_flight(&b) == 8 {
                assert!(in_flight(&a) >= 1, "{all:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        signal(&a, "-STOP");
    };
    let (outcomes, ()) = tokio::join!(futures::future::join_all(streams), stop);
    let failed = outcomes.iter().filter(|o| o.is_err()).count();
    assert!(
        failed >= 1,
        "the streams on the hung worker end with an error"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == Ok(120)).count(),
        8 - failed,
        "the streams on B finish: {outcomes:?}"
    );
    assert_stalled(&gateway, &a).await;
    signal(&a, "-CONT");
}

/// A request an upstream refuses as invalid is the client's 400, with the upstream's param and
/// code, and charges nothing (issue 14, item 6: a remote pool answered 500). Neither retried
/// nor counted against the replica.
#[tokio::test]
async fn a_request_the_upstream_refuses_is_a_400_and_charges_nothing() {
    let a = synthetic_worker(None);
    let b = synthetic_worker(None);
    let gateway = gateway_over_workers(&[&a.base, &b.base], NO_HEALTH_CHECKS, "");
    let huge = json!({"model": "syn", "prompt": ["one", "two"], "max_tokens": i64::MAX});
    let (status, answer) = gateway.post("/v1/completions", huge.clone()).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["type"], "invalid_request_error", "{answer}");
    assert_eq!(
        answer["error"]["code"], "context_length_exceeded",
        "{answer}"
    );
    // Streaming, the headers are out before the upstream answers: the same error as the
    // stream's event.
    let mut streaming = huge;
    streaming["stream"] = json!(true);
    let events = gateway.stream("/v1/completions", streaming).await;
    let error = &events[events.len() - 2]["error"];
    assert_eq!(error["code"], "context_length_exceeded", "{events:?}");
    let standard = gateway.admin_tenant(ADMIN_KEY, "standard").await;
    assert_eq!(standard["live"]["tokens_used_today"], 0, "{standard}");
    assert_eq!(standard["live"]["in_flight"], 0, "{standard}");
    let all = replicas(&gateway).await;
    for worker in [&a, &b] {
        let replica = &all[&("workers".to_string(), worker.base.clone())];
        assert_eq!(replica["failures"], 0, "{replica}");
        assert_eq!(replica["health"], "healthy", "{replica}");
    }
}

#[tokio::test]
async fn a_request_that_fails_before_its_first_token_is_retried_on_another_replica() {
    let live = synthetic_worker(None);
    let dead = dead_address();
    // Health checks rare and the breaker slow to open, so requests do reach the dead replica.
    let gateway = gateway_over_workers(
        &[&dead, &live.base],
        "health_interval_ms = 600000",
        "failure_threshold = 1000",
    );
    // Prompts that start differently: placement by prefix ranks the replicas differently for
    // each, so some go to the dead one first.
    for i in 0..16 {
        assert_eq!(stream_outcome(&gateway, 3).await, Ok(3));
        let (status, body) = gateway
            .post(
                "/v1/completions",
                json!({"model": "syn", "prompt": format!("{i} a b"), "max_tokens": 3}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let all = replicas(&gateway).await;
    let dead_replica = &all[&("workers".to_string(), dead.clone())];
    assert!(
        dead_replica["failures"].as_u64().unwrap() >= 1,
        "{dead_replica}"
    );
    assert!(dead_replica["last_error"]
        .as_str()
        .unwrap()
        .contains("cannot reach"));
}

#[tokio::test]
async fn with_every_replica_down_the_model_answers_503_and_others_still_serve() {
    let config = format!(
        r#"{tenants}
[routing]
health_interval_ms = 100

[[pools]]
name = "gone"
kind = "remote"
urls = ["{d0}", "{d1}"]
open_ms = 60000

[[models]]
id = "remote-only"
pools = ["gone"]

[[models]]
id = "syn"
kind = "synthetic"
[models.synthetic]
"#,
        tenants = tenants(),
        d0 = dead_address(),
        d1 = dead_address(),
    );
    let mut gateway = start_gateway(&config);
    gateway.key = STANDARD_KEY.to_string();
    let request = json!({"model": "remote-only", "prompt": "hello", "max_tokens": 4});

    // Before the health checks notice: both replicas tried, then 503.
    let (status, body) = gateway.post("/v1/completions", request.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(body["error"]["code"], "no_replica_available");
    // The upstreams' addresses and OS errors stay in the log (issue 14, item 7).
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("127.0.0.1") && !message.contains("http://"),
        "{message}"
    );

    // Once both are out, refused at once, streaming or not.
    let (_, pools) = gateway.get("/admin/pools", Some(ADMIN_KEY)).await;
    for replica in pools["data"][0]["replicas"].as_array().unwrap() {
        wait_health(
            &gateway,
            "gone",
            replica["name"].as_str().unwrap(),
            "unhealthy",
        )
        .await;
    }
    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    for body in [request, streaming] {
        let (status, answer) = gateway.post("/v1/completions", body).await;
        assert_eq!(status, 503, "{answer}");
        assert!(answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("remote-only"));
    }
    let metrics = gateway.metrics_text().await;
    assert!(metrics.contains(r#"gateway_pool_up{model="remote-only",pool="gone"} 0"#));
    assert!(metrics.contains(r#"gateway_pool_up{model="syn",pool="local"} 1"#));

    // The other model is unaffected.
    assert_eq!(stream_outcome(&gateway, 5).await, Ok(5));
}

#[tokio::test]
async fn load_balancing_spreads_concurrent_requests_by_outstanding_tokens() {
    let workers = [synthetic_worker(None), synthetic_worker(None)];
    let gateway = gateway_over_workers(&[&workers[0].base, &workers[1].base], "", "");
    // Requests of different sizes, so that balancing by tokens and by count differ.
    let requests: Vec<_> = (0..100)
        .map(|i| stream_outcome(&gateway, 10 + (i % 4) * 10))
        .collect();
    for outcome in futures::future::join_all(requests).await {
        assert!(outcome.is_ok(), "{outcome:?}");
    }
    let a = routed(&gateway, "workers", &workers[0].base).await;
    let b = routed(&gateway, "workers", &workers[1].base).await;
    assert_eq!(a + b, 100);
    assert!(a <= 65 && b <= 65, "unbalanced: {a} vs {b}");
    // Nothing is left reserved once every request ended.
    for replica in replicas(&gateway).await.values() {
        assert_eq!(replica["outstanding_tokens"], 0, "{replica}");
        assert_eq!(replica["in_flight"], 0, "{replica}");
    }
}

/// An OpenAI-compatible upstream that streams `"a b c"` as three tokens and then reports a
/// usage of 12 prompt tokens, or no usage at all.
async fn scripted_upstream(reports_usage: bool) -> String {
    let chunk = |delta: serde_json::Value, finish: Value| {
        json!({"id": "x", "object": "chat.completion.chunk", "model": "syn",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for word in ["a", " b", " c"] {
        events.push(chunk(json!({"content": word}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if reports_usage {
        events.push(
            json!({"id": "x", "object": "chat.completion.chunk", "model": "syn", "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}),
        );
    }
    let body: String = events
        .iter()
        .map(|e| format!("data: {e}\n\n"))
        .chain(["data: [DONE]\n\n".to_string()])
        .collect();
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(move || {
                let body = body.clone();
                async move { ([("content-type", "text/event-stream")], body) }
            }),
        )
        .route(
            "/v1/models",
            axum::routing::get(|| async { axum::Json(json!({"object": "list", "data": []})) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The ledger's records of the standard tenant.
async fn standard_records(gateway: &TestGateway) -> Vec<Value> {
    let (status, body) = gateway
        .get("/admin/usage/records?tenant=standard", Some(ADMIN_KEY))
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_remote_pool_bills_the_upstreams_usage_and_marks_an_estimate() {
    let question = json!({
        "model": "syn",
        "messages": [{"role": "user", "content": "one two three"}],
        "max_tokens": 8,
    });
    for reports_usage in [true, false] {
        let upstream = scripted_upstream(reports_usage).await;
        let gateway = gateway_over_workers(&[&upstream], NO_HEALTH_CHECKS, "");
        let (status, whole) = gateway.post("/v1/chat/completions", question.clone()).await;
        assert_eq!(status, 200, "{whole}");
        let mut streamed = question.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        let events = gateway.stream("/v1/chat/completions", streamed).await;
        let stream_usage = &events[events.len() - 2]["usage"];
        let records = standard_records(&gateway).await;
        assert_eq!(records.len(), 2, "{records:?}");
        let billed = whole["usage"]["prompt_tokens"].as_u64().unwrap();
        if reports_usage {
            assert_eq!(billed, 12, "the client sees the upstream's count");
        } else {
            assert_ne!(billed, 12, "no usage: the gateway's estimate");
        }
        assert_eq!(stream_usage["prompt_tokens"], billed);
        for record in &records {
            assert_eq!(record["prompt_tokens"], billed, "{record}");
            assert_eq!(record["completion_tokens"], 3, "{record}");
            assert_eq!(
                record["prompt_tokens_estimated"], !reports_usage,
                "{record}"
            );
        }
        // The quota's day counts what the ledger bills.
        let standard = gateway.admin_tenant(ADMIN_KEY, "standard").await;
        assert_eq!(
            standard["live"]["tokens_used_today"],
            2 * (billed + 3),
            "{standard}"
        );
    }
}

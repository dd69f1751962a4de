//! Two gateway replicas on one real Redis (`[quotas] redis_url`) and one real PostgreSQL
//! (`[ledger] url`): a tenant's limits hold over the fleet, not per replica; either replica's
//! `/admin/usage` answers for the fleet; a replica killed with SIGKILL gives its concurrency
//! slots back within the lease time and loses no record of a request that got `[DONE]`; Redis
//! stopped mid-run follows each replica's policy and is used again when it returns. The
//! synthetic model keeps the load cheap.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{digest, Options, TestGateway};
use ledger::test_server::PostgresServer;
use redis_quotas::test_server::RedisServer;
use serde_json::json;

const ADMIN: &str = "sk-fleet-admin";

/// The fleet's shared servers.
struct Shared {
    redis: RedisServer,
    ledger_url: String,
    _postgres: PostgresServer,
}

fn shared() -> Shared {
    let postgres = PostgresServer::start();
    Shared {
        redis: RedisServer::start(),
        ledger_url: postgres.database("fleet"),
        _postgres: postgres,
    }
}

fn config(shared: &Shared, quotas_extra: &str, tokens_per_second: f64) -> String {
    format!(
        "admin_keys = [\"{admin}\"]\n\
         [ledger]\nurl = \"{ledger}\"\n\
         [quotas]\nredis_url = \"{url}\"\nnamespace = \"fleet\"\nlease_secs = 2\n\
         retry_interval_ms = 200\n{quotas_extra}\n\
         [[models]]\nid = \"bench\"\nkind = \"synthetic\"\n\
         [models.synthetic]\ntokens_per_second = {tokens_per_second}\n\
         [[tenants]]\nid = \"rpm\"\nkeys = [\"{rpm}\"]\nrequests_per_minute = 120\n\
         [[tenants]]\nid = \"tpm\"\nkeys = [\"{tpm}\"]\ntokens_per_minute = 6000\n\
         [[tenants]]\nid = \"conc\"\nkeys = [\"{conc}\"]\nmax_concurrent = 4\n\
         [[tenants]]\nid = \"free\"\nkeys = [\"{free}\"]\n",
        admin = digest(ADMIN),
        ledger = shared.ledger_url,
        url = shared.redis.url(),
        rpm = digest("sk-rpm"),
        tpm = digest("sk-tpm"),
        conc = digest("sk-conc"),
        free = digest("sk-free"),
    )
}

fn replica(config: &str) -> TestGateway {
    TestGateway::start(Options {
        config: Some(config),
        ..Options::default()
    })
}

fn completion(max_tokens: u64, stream: bool) -> serde_json::Value {
    json!({"model": "bench", "prompt": "Count the sheep in the field", "max_tokens": max_tokens,
           "stream": stream})
}

/// Drives `key` with 8 clients spread over `replicas` for `run`: `(admitted, tokens of the
/// admitted, seconds from the first to the last admission)`.
async fn hammer(replicas: &[&TestGateway], key: &str, run: Duration) -> (u64, u64, f64) {
    let admitted = Arc::new(AtomicU64::new(0));
    let tokens = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let last = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let mut clients = Vec::new();
    for i in 0..8 {
        let replica = replicas[i % replicas.len()];
        let (client, url) = (replica.client(), replica.url("/v1/completions"));
        let (admitted, tokens, last, key) = (
            admitted.clone(),
            tokens.clone(),
            last.clone(),
            key.to_string(),
        );
        clients.push(tokio::spawn(async move {
            while start.elapsed() < run {
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&completion(20, false))
                    .send()
                    .await
                    .unwrap();
                match response.status().as_u16() {
                    200 => {
                        let body: serde_json::Value = response.json().await.unwrap();
                        tokens.fetch_add(
                            body["usage"]["total_tokens"].as_u64().unwrap(),
                            Ordering::Relaxed,
                        );
                        admitted.fetch_add(1, Ordering::Relaxed);
                        *last.lock().unwrap() = start.elapsed();
                    }
                    429 => tokio::time::sleep(Duration::from_millis(5)).await,
                    other => panic!("{other}: {}", response.text().await.unwrap()),
                }
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let elapsed = last.lock().unwrap().as_secs_f64();
    (
        admitted.load(Ordering::Relaxed),
        tokens.load(Ordering::Relaxed),
        elapsed,
    )
}

/// One request of the unlimited tenant on each replica, until served: each has connected to
/// Redis before the limits are measured (a replica connects on first use, and under
/// `fail_open` a first call that times out is admitted by the replica's own limits).
async fn connected(replicas: &[&TestGateway]) {
    for replica in replicas {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let served = replica
                .client()
                .post(replica.url("/v1/completions"))
                .bearer_auth("sk-free")
                .json(&completion(1, false))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if served && replica.metric("gateway_quota_store_available").await == 1.0 {
                break;
            }
            assert!(Instant::now() < deadline, "the replica never reached Redis");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether `value` is within 5% of `expected`.
fn within_5_percent(value: f64, expected: f64) -> bool {
    (value - expected).abs() <= 0.05 * expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_tokens_per_minute_hold_over_two_replicas() {
    let shared = shared();
    let config = config(&shared, "", 0.0);
    let (a, b) = (replica(&config), replica(&config));
    let run = Duration::from_secs(5);
    connected(&[&a, &b]).await;

    // 120 a minute, a burst of the whole minute, then 2 a second: over both replicas together.
    let (admitted, _, elapsed) = hammer(&[&a, &b], "sk-rpm", run).await;
    let rpm_admitted = admitted;
    let allowed = 120.0 * (1.0 + elapsed / 60.0);
    assert!(
        within_5_percent(admitted as f64, allowed),
        "{admitted} requests admitted in {elapsed:.1} s over two replicas; the limit allows {allowed:.0}"
    );

    // 6000 tokens a minute (the synthetic engine uses all of `max_tokens`: nothing comes back).
    let (_, tokens, elapsed) = hammer(&[&a, &b], "sk-tpm", run).await;
    let allowed = 6000.0 * (1.0 + elapsed / 60.0);
    assert!(
        within_5_percent(tokens as f64, allowed),
        "{tokens} tokens in {elapsed:.1} s over two replicas; the limit allows {allowed:.0}"
    );
    // Either replica reports the fleet's day (settlements reach Redis just after the
    // responses: a bounded wait).
    let used = |t: serde_json::Value| t["live"]["tokens_used_today"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (on_a, on_b) = (
            used(a.admin_tenant(ADMIN, "tpm").await),
            used(b.admin_tenant(ADMIN, "tpm").await),
        );
        if on_a == on_b && on_a >= tokens {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A reports {on_a}, B {on_b}; {tokens} were served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The shared ledger: either replica's /admin/usage has every request of both.
    for replica in [&a, &b] {
        let (status, usage) = replica.get("/admin/usage?tenant=rpm", Some(ADMIN)).await;
        assert_eq!(status, 200, "{usage}");
        assert_eq!(usage["data"][0]["requests"], rpm_admitted, "{usage}");
        let (_, usage) = replica.get("/admin/usage?tenant=tpm", Some(ADMIN)).await;
        assert_eq!(usage["data"][0]["total_tokens"], tokens, "{usage}");
    }
}

/// Opens a stream and reads its first event: the request is admitted and running.
async fn running_stream(replica: &TestGateway, key: &str) -> reqwest::Response {
    let mut response = replica
        .client()
        .post(replica.url("/v1/completions"))
        .bearer_auth(key)
        .json(&completion(1000, true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.chunk().await.unwrap().expect("a first event");
    response
}

async fn status_of(replica: &TestGateway, key: &str) -> (u16, serde_json::Value) {
    let response = replica
        .client()
        .post(replica.url("/v1/completions"))
        .bearer_auth(key)
        .json(&completion(1, false))
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_holds_over_replicas_and_a_killed_replica_returns_its_slots() {
    let shared = shared();
    // Paced: a stream of 1000 tokens runs 100 s, far past the test.
    let config = config(&shared, "", 10.0);
    let (mut a, b) = (replica(&config), replica(&config));
    // Streams that end with `[DONE]` on A before it dies: their records must survive it.
    let mut finished_on_a = Vec::new();
    for _ in 0..3 {
        let response = a
            .client()
            .post(a.url("/v1/completions"))
            .bearer_auth("sk-conc")
            .json(&completion(3, true))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let body = response.text().await.unwrap();
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
        finished_on_a.push(id);
    }
    let mut held_on_a = Vec::new();
    for _ in 0..3 {
        held_on_a.push(running_stream(&a, "sk-conc").await);
    }
    let held_on_b = running_stream(&b, "sk-conc").await;
    let (status, body) = status_of(&b, "sk-conc").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // Both replicas see the fleet's four.
    for replica in [&a, &b] {
        let live = replica.admin_tenant(ADMIN, "conc").await;
        assert_eq!(live["live"]["in_flight"], 4, "{live}");
    }

    // SIGKILL: A settles nothing and renews nothing; its three leases expire (2 s).
    a.kill_now();
    let killed = Instant::now();
    let mut admitted = 0;
    while admitted < 3 {
        let (status, body) = status_of(&b, "sk-conc").await;
        match status {
            200 => admitted += 1,
            429 => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("{other}: {body}"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the killed replica's slots never came back"
        );
    }
    // B's own stream still holds its slot: four at once again, no more.
    let others: Vec<_> =
        futures::future::join_all((0..3).map(|_| running_stream(&b, "sk-conc"))).await;
    assert_eq!(status_of(&b, "sk-conc").await.0, 429);
    drop((others, held_on_b, held_on_a));
    // Every request A finished before it was killed is in the shared ledger, as B reads it.
    let (status, records) = b.get("/admin/usage/records?tenant=conc", Some(ADMIN)).await;
    assert_eq!(status, 200, "{records}");
    let recorded: Vec<&str> = records["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "completed")
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    for id in &finished_on_a {
        assert!(
            recorded.contains(&id.as_str()),
            "{id} missing from {records}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_follows_each_replicas_policy_and_recovers() {
    let mut shared = shared();
    let open = replica(&config(&shared, "on_unavailable = \"fail_open\"", 0.0));
    let closed = replica(&config(&shared, "on_unavailable = \"fail_closed\"", 0.0));
    for replica in [&open, &closed] {
        assert_eq!(status_of(replica, "sk-free").await.0, 200);
        assert_eq!(replica.metric("gateway_quota_store_available").await, 1.0);
    }

    shared.redis.stop();
    // fail_open: served by the replica's own limits; fail_closed: 503 with Retry-After.
    for _ in 0..5 {
        assert_eq!(status_of(&open, "sk-free").await.0, 200);
        let response = closed
            .client()
            .post(closed.url("/v1/completions"))
            .bearer_auth("sk-free")
            .json(&completion(1, false))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "quota_store_unavailable", "{body}");
    }
    assert_eq!(open.metric("gateway_quota_store_available").await, 0.0);
    // Every series docs/observability.md lists for the store is there.
    let text = open.metrics_text().await;
    for name in [
        "gateway_quota_store_available",
        "gateway_quota_store_errors_total",
        "gateway_quota_store_fallback_admissions_total",
        "gateway_quota_store_unavailable_refusals_total",
    ] {
        assert!(text.contains(name), "{name} not in /metrics");
    }
    assert!(open.metric("gateway_quota_store_errors_total").await >= 1.0);
    assert!(
        open.metric("gateway_quota_store_fallback_admissions_total")
            .await
            >= 5.0
    );
    assert!(
        closed
            .metric("gateway_quota_store_unavailable_refusals_total")
            .await
            >= 5.0
    );

    shared.redis.resume();
    let deadline = Instant::now() + Duration::from_secs(20);
    for replica in [&open, &closed] {
        while !(status_of(replica, "sk-free").await.0 == 200
            && replica.metric("gateway_quota_store_available").await == 1.0)
        {
            assert!(Instant::now() < deadline, "Redis never used again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

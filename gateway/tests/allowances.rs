//! Grants and budgets end to end: parallel requests near the end of a grant never take it past
//! its amount, in one process (SQLite) and over two replicas (PostgreSQL and Redis); a grant
//! that expires mid-stream lets the admitted request finish and refuses the next; a replica
//! killed mid-request gives its reservation back within the lease; the usage report matches the
//! ledger. The synthetic model keeps the load cheap.

mod common;

use std::time::{Duration, Instant};

use common::{call, digest, Options, TestGateway};
use ledger::test_server::PostgresServer;
use redis_quotas::test_server::RedisServer;
use serde_json::{json, Value};

const OPERATOR: &str = "sk-operator-allowances";
const MAX_TOKENS: u64 = 4;

/// A completion of `MAX_TOKENS` with `key`: `(status, body)`.
async fn complete(gateway: &TestGateway, key: &str) -> (u16, Value) {
    let body = json!({"model": "bench", "prompt": "Count the sheep", "max_tokens": MAX_TOKENS});
    call(gateway, "POST", "/v1/completions", key, Some(body)).await
}

/// What one request reserves (its prompt, learned from a first request's usage, plus
/// `max_tokens`), and what that first request used.
async fn reservation_size(gateway: &TestGateway, key: &str) -> (i64, i64) {
    let (status, body) = complete(gateway, key).await;
    assert_eq!(status, 200, "{body}");
    let usage = &body["usage"];
    (
        usage["prompt_tokens"].as_i64().unwrap() + MAX_TOKENS as i64,
        usage["total_tokens"].as_i64().unwrap(),
    )
}

/// The first line of `/admin/allowances?tenant=`.
async fn report_line(gateway: &TestGateway, tenant: &str) -> Value {
    let path = format!("/admin/allowances?tenant={tenant}");
    let (status, report) = call(gateway, "GET", &path, OPERATOR, None).await;
    assert_eq!(status, 200, "{report}");
    report["data"][0].clone()
}

async fn grant(gateway: &TestGateway, body: Value) {
    let (status, answer) = call(gateway, "POST", "/admin/grants", OPERATOR, Some(body)).await;
    assert_eq!(status, 201, "{answer}");
}

fn config(extra: &str, keys: &[(&str, &str)]) -> String {
    let mut config = format!(
        "admin_keys = [\"{admin}\"]\n{extra}\n\
         [[models]]\nid = \"bench\"\nkind = \"synthetic\"\n\
         [models.synthetic]\ntokens_per_second = 2000\n\
         [[models]]\nid = \"slow\"\nkind = \"synthetic\"\n\
         [models.synthetic]\ntokens_per_second = 20\n",
        admin = digest(OPERATOR),
    );
    for (tenant, key) in keys {
        config.push_str(&format!(
            "[[tenants]]\nid = \"{tenant}\"\nkeys = [\"{}\"]\n",
            digest(key)
        ));
    }
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_is_never_overdrawn_and_expires_between_requests() {
    let config = config(
        "[control_plane]\nenabled = true\n",
        &[("lab", "sk-lab-grant"), ("stream", "sk-stream-grant")],
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let (size, first_total) = reservation_size(&gw, "sk-lab-grant").await;
    let now = control_plane::now_ms();
    // Room for three requests' maxima and half of a fourth.
    grant(
        &gw,
        json!({"id": "g-lab", "tenant": "lab", "unit": "tokens", "amount": 3 * size + size / 2,
               "expires_at_ms": now + 3_600_000}),
    )
    .await;
    let answers = futures::future::join_all((0..8).map(|_| complete(&gw, "sk-lab-grant"))).await;
    let admitted: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(admitted.len(), 3, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"]["type"], "insufficient_quota");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("g-lab"),
            "{body}"
        );
    }
    // The report matches what the admitted requests used (settled as they ended).
    let used: i64 = admitted
        .iter()
        .map(|b| b["usage"]["total_tokens"].as_i64().unwrap())
        .sum();
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let line = report_line(&gw, "lab").await;
        if line["used"].as_i64() == Some(used) || Instant::now() > deadline {
            break line;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["used"].as_i64(), Some(used), "{line}");
    assert!(line["used"].as_i64().unwrap() <= line["amount"].as_i64().unwrap());
    assert_eq!(line["remaining"], line["amount"].as_i64().unwrap() - used);
    let (_, records) = call(&gw, "GET", "/admin/usage?tenant=lab", OPERATOR, None).await;
    let ledger_total = records["data"][0]["total_tokens"].as_i64().unwrap();
    // The first request, made before the grant, is in the ledger and in no grant.
    assert_eq!(ledger_total, used + first_total);
    let csv = gw
        .client()
        .get(gw.url("/admin/allowances?format=csv"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.starts_with("kind,id,tenant"), "{csv}");
    assert!(csv.contains("g-lab"), "{csv}");

    // A grant that expires mid-stream: the admitted request finishes, the next is refused.
    let expires = control_plane::now_ms() + 1_000;
    grant(
        &gw,
        json!({"id": "g-short", "tenant": "stream", "unit": "tokens", "amount": 1_000_000,
               "expires_at_ms": expires}),
    )
    .await;
    let body = json!({"model": "slow", "prompt": "Tell a long story", "max_tokens": 40,
                      "stream": true});
    let response = gw
        .client()
        .post(gw.url("/v1/completions"))
        .bearer_auth("sk-stream-grant")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        control_plane::now_ms() > expires,
        "the stream outlived the grant"
    );
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let (status, refused) = complete(&gw, "sk-stream-grant").await;
    assert_eq!(status, 429, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("g-short") && message.contains("expired"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn over_two_replicas_a_grant_holds_and_a_killed_replica_gives_its_hold_back() {
    let postgres = PostgresServer::start();
    let store = postgres.database("allowances");
    let redis = RedisServer::start();
    let extra = format!(
        "[control_plane]\nenabled = true\nurl = \"{store}\"\npoll_interval_ms = 200\n\
         allowance_lease_secs = 2\n\
         [quotas]\nredis_url = \"{}\"\nnamespace = \"allow\"\nlease_secs = 2\n",
        redis.url()
    );
    let config = config(
        &extra,
        &[("lab", "sk-lab-fleet"), ("solo", "sk-solo-fleet")],
    );
    let mut a = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let b = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let (size, _) = reservation_size(&a, "sk-lab-fleet").await;
    grant(
        &a,
        json!({"id": "g-fleet", "tenant": "lab", "unit": "tokens", "amount": 4 * size + size / 2,
               "expires_at_ms": control_plane::now_ms() + 3_600_000}),
    )
    .await;
    // B sees the grant once it has reloaded.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let answers = futures::future::join_all((0..12).map(|i| {
        let replica = if i % 2 == 0 { &a } else { &b };
        complete(replica, "sk-lab-fleet")
    }))
    .await;
    let admitted = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(admitted, 4, "{answers:?}");

    // A replica killed mid-request: its reservation lapses with its lease (2 s), not never.
    let solo_size = reservation_size(&a, "sk-solo-fleet").await.0 + 40 - MAX_TOKENS as i64;
    grant(
        &a,
        json!({"id": "g-one", "tenant": "solo", "unit": "tokens", "amount": solo_size + 5,
               "expires_at_ms": control_plane::now_ms() + 3_600_000}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let client = a.client();
    let url = a.url("/v1/completions");
    let long = tokio::spawn(async move {
        // 40 tokens at 20 per second: held for two seconds, unless the replica dies first.
        let body = json!({"model": "slow", "prompt": "Count the sheep", "max_tokens": 40,
                          "stream": true});
        // Read to the end (or until the replica dies): a client that hangs up ends it.
        if let Ok(response) = client
            .post(url)
            .bearer_auth("sk-solo-fleet")
            .json(&body)
            .send()
            .await
        {
            let _ = response.text().await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = json!({"model": "slow", "prompt": "Count the sheep", "max_tokens": 40});
    let (status, refused) = call(
        &b,
        "POST",
        "/v1/completions",
        "sk-solo-fleet",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 429, "the first request holds the grant: {refused}");
    a.kill_now();
    let _ = long.await;
    // Nothing of the killed request was settled: its hold simply lapses.
    assert_eq!(report_line(&b, "solo").await["used"], 0);
    let killed_at = Instant::now();
    let mut admitted_again = None;
    while killed_at.elapsed() < Duration::from_secs(15) {
        let (status, _) = call(
            &b,
            "POST",
            "/v1/completions",
            "sk-solo-fleet",
            Some(body.clone()),
        )
        .await;
        if status == 200 {
            admitted_again = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        admitted_again.is_some(),
        "the killed replica's reservation never lapsed"
    );
}

/// A webhook receiver on a loopback port: the JSON bodies POSTed to it, in order.
async fn webhook() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use axum::routing::post;
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/alerts",
        post(move |axum::Json(body): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

#[tokio::test(flavor = "multi_thread")]
async fn thresholds_are_counted_and_sent_to_the_operators_webhook_once() {
    let (url, received) = webhook().await;
    let extra = format!(
        "[control_plane]\nenabled = true\nalert_thresholds_percent = [30, 70]\n\
         alert_webhook_url = \"{url}\"\n"
    );
    let config = config(&extra, &[("lab", "sk-lab-alerts")]);
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let (size, _) = reservation_size(&gw, "sk-lab-alerts").await;
    let amount = 2 * size + size / 2;
    grant(
        &gw,
        json!({"id": "g-alert", "tenant": "lab", "unit": "tokens", "amount": amount,
               "expires_at_ms": control_plane::now_ms() + 3_600_000}),
    )
    .await;
    // Each request uses about 40 % of the grant: the first crosses 30 %, the second 70 %.
    let mut used = 0;
    for _ in 0..2 {
        let (status, body) = complete(&gw, "sk-lab-alerts").await;
        assert_eq!(status, 200, "{body}");
        used += body["usage"]["total_tokens"].as_i64().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = received.lock().unwrap().clone();
    let thresholds: Vec<i64> = events
        .iter()
        .map(|e| e["threshold_percent"].as_i64().unwrap())
        .collect();
    assert_eq!(thresholds, [30, 70], "{events:?}");
    assert_eq!(events[1]["id"], "g-alert");
    assert_eq!(events[1]["tenant"], "lab");
    assert_eq!(events[1]["used"].as_i64(), Some(used));
    assert_eq!(events[1]["amount"].as_i64(), Some(amount));
    let metrics = gw.metrics_text().await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("gateway_allowance_used_ratio{") && l.contains("g-alert"))
        .unwrap_or_else(|| panic!("no gauge in {metrics}"));
    let ratio: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((ratio - used as f64 / amount as f64).abs() < 1e-9, "{line}");
    assert!(
        metrics.contains("gateway_allowance_threshold_crossings_total{kind=\"grant\",id=\"g-alert\",threshold=\"70\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_money_budget_is_reserved_at_the_most_and_settled_at_the_real_cost() {
    let config = config(
        "[control_plane]\nenabled = true\ncurrency = \"KRW\"\n",
        &[("lab", "sk-lab-budget")],
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let (size, _) = reservation_size(&gw, "sk-lab-budget").await;
    // One won per token, prompt and output alike: a request may cost `size` won at most.
    let (status, price) = call(
        &gw,
        "POST",
        "/admin/prices",
        OPERATOR,
        Some(json!({"model": "bench", "input_per_mtok": 1_000_000, "output_per_mtok": 1_000_000})),
    )
    .await;
    assert_eq!(status, 201, "{price}");
    let amount = 2 * size + size / 2;
    let (status, budget) = call(
        &gw,
        "POST",
        "/admin/budgets",
        OPERATOR,
        Some(json!({"id": "lab-daily", "tenant": "lab", "period": "day", "amount": amount})),
    )
    .await;
    assert_eq!(status, 201, "{budget}");
    let answers = futures::future::join_all((0..8).map(|_| complete(&gw, "sk-lab-budget"))).await;
    let admitted: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(admitted.len(), 2, "{answers:?}");
    let refused = answers.iter().find(|(s, _)| *s == 429).unwrap();
    assert!(
        refused.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lab-daily"),
        "{refused:?}"
    );
    // Settled at the real cost: what the two requests used, in won.
    let spent: i64 = admitted
        .iter()
        .map(|b| b["usage"]["total_tokens"].as_i64().unwrap())
        .sum();
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let line = report_line(&gw, "lab").await;
        if line["used"].as_i64() == Some(spent) || Instant::now() > deadline {
            break line;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["kind"], "budget");
    assert_eq!(line["used"].as_i64(), Some(spent), "{line}");
    assert_eq!(
        line["used_exact"].as_i64(),
        Some(spent * 1_000_000),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn over_two_replicas_a_money_budget_holds_exactly() {
    let postgres = PostgresServer::start();
    let store = postgres.database("budgets");
    let extra = format!(
        "[control_plane]\nenabled = true\nurl = \"{store}\"\npoll_interval_ms = 200\n\
         currency = \"EUR\"\n"
    );
    let config = config(&extra, &[("lab", "sk-lab-money")]);
    let a = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let b = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let (size, _) = reservation_size(&a, "sk-lab-money").await;
    // A cent per token: a request may cost `size` cents; the month has room for three.
    let (status, _) = call(
        &a,
        "POST",
        "/admin/prices",
        OPERATOR,
        Some(json!({"model": "bench", "input_per_mtok": 1_000_000, "output_per_mtok": 1_000_000})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = call(
        &a,
        "POST",
        "/admin/budgets",
        OPERATOR,
        Some(
            json!({"id": "lab-month", "tenant": "lab", "period": "month",
                    "amount": 3 * size + size / 2}),
        ),
    )
    .await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let answers = futures::future::join_all((0..12).map(|i| {
        let replica = if i % 2 == 0 { &a } else { &b };
        complete(replica, "sk-lab-money")
    }))
    .await;
    let admitted = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(admitted, 3, "{answers:?}");
    assert!(answers
        .iter()
        .filter(|(s, _)| *s != 200)
        .all(|(s, body)| *s == 429 && body.to_string().contains("lab-month")));
}

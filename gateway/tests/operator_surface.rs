//! What operators and client developers read off the gateway besides completions: `/metrics`
//! in both text formats (linted by Prometheus's own `promtool`), per-tenant latency series,
//! `/version`, `/openapi.json`, CORS, and the `param` of a missing field. Real binary, loopback.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{digest, Options, TestGateway};
use serde_json::{json, Value};

fn synthetic_config(extra: &str) -> String {
    format!(
        "[server]\n{extra}\n\
         [[models]]\nid = \"bench\"\nkind = \"synthetic\"\n[models.synthetic]\ntokens_per_second = 0\n\
         [[tenants]]\nid = \"a\"\nkeys = [\"{}\"]\n\
         [[tenants]]\nid = \"b\"\nkeys = [\"{}\"]\nrequests_per_minute = 100\n",
        digest("sk-a"),
        digest("sk-b"),
    )
}

async fn complete(gw: &TestGateway, key: &str) {
    let body = json!({"model": "bench", "prompt": "one two three", "max_tokens": 3});
    let (status, body) = gw
        .post_raw("/v1/completions", body.to_string(), Some(key))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// `promtool`, from `PROMTOOL` or the path (`scripts/test.sh` installs Debian's `prometheus`
/// package, which ships it, when it is absent).
fn promtool() -> String {
    std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_string())
}

#[tokio::test]
async fn metrics_pass_promtool_and_carry_the_tenant_on_latencies() {
    let config = synthetic_config("");
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    complete(&gw, "sk-a").await;
    complete(&gw, "sk-b").await;

    // The classic format by default (what promtool reads).
    let response = gw.client().get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let classic = response.text().await.unwrap();
    assert!(!classic.contains("# EOF"));
    assert!(classic.contains("# TYPE gateway_requests_total counter"));
    for tenant in ["a", "b"] {
        let series = format!("gateway_time_to_first_token_seconds_count{{tenant=\"{tenant}\",model=\"bench\",pool=\"local\"}} 1");
        assert!(classic.contains(&series), "no `{series}` in:\n{classic}");
    }
    assert!(classic.contains("gateway_build_info{version=\""));
    assert!(classic.contains("process_resident_memory_bytes "));
    assert!(classic.contains("gateway_engine_kv_cache_usage_ratio{model=\"bench\"}"));

    let mut lint = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): run scripts/test.sh, or install Debian's `prometheus` package, or set PROMTOOL")
        });
    lint.stdin
        .take()
        .unwrap()
        .write_all(classic.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics:\n{report}");
    assert!(
        report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );

    // OpenMetrics when asked for, as Prometheus does.
    let response = gw
        .client()
        .get(gw.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let openmetrics = response.text().await.unwrap();
    assert!(openmetrics.ends_with("# EOF\n"));
    assert!(openmetrics.contains("# TYPE gateway_requests counter"));
    // Help texts end in one period, not two.
    assert!(!openmetrics.contains(".."), "{openmetrics}");
}

#[tokio::test]
async fn version_and_openapi_describe_the_running_gateway() {
    let config = synthetic_config("");
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let (status, version) = gw.get("/version", None).await;
    assert_eq!(status, 200);
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert!(!version["commit"].as_str().unwrap().is_empty());
    assert!(["avx512-vnni", "avx2", "portable"].contains(&version["cpu_kernels"].as_str().unwrap()));

    let (status, doc) = gw.get("/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for route in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{model}",
        "/load",
        "/v1/embeddings",
        "/admin/tenants",
        "/admin/usage",
        "/admin/usage/records",
        "/admin/pools",
        "/health",
        "/ready",
        "/metrics",
        "/version",
        "/openapi.json",
    ] {
        assert!(paths.contains(&route), "{route} missing from {paths:?}");
    }
    for route in gateway::paths::ALL {
        assert!(
            paths.contains(route),
            "{route} is served but not documented"
        );
    }
    // Every documented path is served (no 404 `unknown_url`).
    for path in &paths {
        let url = gw.url(
            &path
                .replace("{model}", "bench")
                .replace("{tenant}", "a")
                .replace("{project}", "p")
                .replace("{key}", "k")
                .replace("{adapter}", "x"),
        );
        let method = match doc["paths"][*path].get("post") {
            Some(_) => reqwest::Method::POST,
            None => reqwest::Method::GET,
        };
        let response = gw
            .client()
            .request(method, url)
            .bearer_auth("sk-a")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert!(!body.contains("unknown_url"), "{path}: {status} {body}");
    }
    // The request bodies come from the parsed types: the chat body names its fields.
    let chat = &doc["paths"]["/v1/chat/completions"]["post"]["requestBody"];
    let reference = chat["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .unwrap();
    let name = reference.rsplit('/').next().unwrap();
    let schema = doc["components"]["schemas"][name].to_string();
    for field in ["messages", "temperature", "max_tokens", "stream_options"] {
        assert!(
            schema.contains(field) || doc.to_string().contains(field),
            "{field}"
        );
    }
}

#[tokio::test]
async fn cors_is_off_by_default_and_answers_configured_origins() {
    let preflight = |gw: &TestGateway| {
        gw.client()
            .request(reqwest::Method::OPTIONS, gw.url("/v1/chat/completions"))
            .header("origin", "https://chat.example.org")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let config = synthetic_config("");
    let off = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let response = preflight(&off).await.unwrap();
    assert!(!response
        .headers()
        .contains_key("access-control-allow-origin"));

    let config = synthetic_config("cors_origins = [\"https://chat.example.org\"]");
    let on = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let response = preflight(&on).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://chat.example.org"
    );
    // A real request from that origin can read its answer and the rate-limit headers.
    let response = on
        .client()
        .get(on.url("/v1/models"))
        .header("origin", "https://chat.example.org")
        .bearer_auth("sk-b")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://chat.example.org"
    );
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        exposed.contains("x-ratelimit-remaining-requests"),
        "{exposed}"
    );
}

#[tokio::test]
async fn a_missing_field_is_named_in_param() {
    let config = synthetic_config("");
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "bench"}),
            "messages",
        ),
        ("/v1/chat/completions", json!({"messages": []}), "model"),
        ("/v1/completions", json!({"model": "bench"}), "prompt"),
        (
            "/v1/chat/completions",
            json!({"model": "bench", "messages": [{"content": "hi"}]}),
            "messages[0].role",
        ),
    ];
    for (path, body, param) in cases {
        let (status, answer): (u16, Value) =
            gw.post_raw(path, body.to_string(), Some("sk-a")).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["param"], param, "{answer}");
    }
}

/// `/load` moves with every tenant's requests (running sequences, outstanding tokens, free KV
/// blocks), so no tenant key reads it (issue 30, item 6; before, issue 14 had narrowed it to the
/// caller's models): it is for the gateways that route to an engine-worker, whose shared secret
/// is the worker's admin key, and for operators.
#[tokio::test]
async fn load_takes_an_admin_or_worker_key_never_a_tenants() {
    let config = format!(
        "admin_keys = [\"{}\"]\n\
         [[models]]\nid = \"bench\"\nkind = \"synthetic\"\n[models.synthetic]\ntokens_per_second = 0\n\
         [[models]]\nid = \"secret-model\"\nkind = \"synthetic\"\n[models.synthetic]\ntokens_per_second = 0\n\
         [[tenants]]\nid = \"narrow\"\nkeys = [\"{}\"]\nmodels = [\"bench\"]\n\
         [[tenants]]\nid = \"wide\"\nkeys = [\"{}\"]\n",
        digest("sk-operator"),
        digest("sk-narrow"),
        digest("sk-wide"),
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    for tenant_key in ["sk-narrow", "sk-wide"] {
        let (status, answer) = gw.get("/load", Some(tenant_key)).await;
        assert_eq!(status, 403, "{answer}");
        assert_eq!(answer["error"]["code"], "admin_key_required");
    }
    let (status, _) = gw.get("/load", None).await;
    assert_eq!(status, 401);
    let (status, load) = gw.get("/load", Some("sk-operator")).await;
    assert_eq!(status, 200, "{load}");
    let models: Vec<&str> = load["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["bench", "secret-model"]);
}

/// Internals stay out of what tenants and anonymous callers see (issue 14, item 7): a model
/// that failed to load is "failed" on `/ready` and a generic 500 to a tenant, while the file
/// path and the OS error are in the log.
#[tokio::test]
async fn a_model_that_failed_to_load_does_not_reveal_its_path() {
    let secret_path = "/srv/secret-models/internal-name.gguf";
    let config = format!(
        "[[models]]\nid = \"broken\"\npath = \"{secret_path}\"\n\
         [[tenants]]\nid = \"t\"\nkeys = [\"{}\"]\n",
        digest("sk-t"),
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        model_flag: false,
        wait_ready: false,
        capture_stderr: true,
        ..Options::default()
    });
    let mut ready = Value::Null;
    for _ in 0..200 {
        ready = gw.get("/ready", None).await.1;
        if ready["models"]["broken"] == "failed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(ready["models"]["broken"], "failed", "{ready}");
    assert!(!ready.to_string().contains("secret-models"), "{ready}");
    let body = json!({"model": "broken", "prompt": "hi", "max_tokens": 1}).to_string();
    let (status, answer) = gw.post_raw("/v1/completions", body, Some("sk-t")).await;
    assert_eq!(status, 500, "{answer}");
    assert!(!answer.to_string().contains("secret-models"), "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-request-id"));
    // The operator still has the cause.
    let log = gw.stderr.lock().unwrap().join("\n");
    assert!(log.contains("secret-models"), "{log}");
}

/// `/metrics` names every tenant and its usage; where tenants can reach the gateway it goes
/// behind a key (issue 14, item 7): `[telemetry] metrics_keys`, or an admin key.
#[tokio::test]
async fn metrics_can_be_put_behind_a_key() {
    let config = format!(
        "admin_keys = [\"{}\"]\n[telemetry]\nmetrics_keys = [\"{}\"]\n\
         [[models]]\nid = \"bench\"\nkind = \"synthetic\"\n[models.synthetic]\ntokens_per_second = 0\n\
         [[tenants]]\nid = \"t\"\nkeys = [\"{}\"]\n",
        digest("sk-admin"),
        digest("sk-scrape"),
        digest("sk-tenant"),
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let scrape = async |key: Option<&str>| {
        let mut request = gw.client().get(gw.url("/metrics"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    };
    assert_eq!(scrape(None).await.0, 401);
    assert_eq!(scrape(Some("sk-tenant")).await.0, 401);
    let (status, text) = scrape(Some("sk-scrape")).await;
    assert_eq!(status, 200);
    assert!(text.contains("gateway_build_info"));
    assert_eq!(scrape(Some("sk-admin")).await.0, 200);
}

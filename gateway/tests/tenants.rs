//! Multi-tenancy end to end: keys and hot reload, quotas and their headers, the admin API.

mod common;

use std::time::Duration;

use common::{digest, Options, TestGateway, MODEL};
use serde_json::json;

/// A config with the model and the given tenant blocks.
fn config(tenants: &str) -> String {
    format!(
        "admin_keys = [\"{}\"]\n[[models]]\nid = \"{MODEL}\"\n{tenants}",
        digest("sk-admin")
    )
}

fn tenant(id: &str, key: &str, extra: &str) -> String {
    format!(
        "[[tenants]]\nid = \"{id}\"\nkeys = [\"{}\"]\n{extra}\n",
        digest(key)
    )
}

fn completion(max_tokens: u64) -> String {
    json!({"model": MODEL, "prompt": "Hello", "max_tokens": max_tokens}).to_string()
}

/// Polls `probe` until it returns true; a bound so a broken reload fails instead of hanging.
async fn eventually(mut probe: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..100 {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn rewrite(gw: &TestGateway, contents: &str) {
    // Write then rename, as editors do; the watcher follows the directory.
    let path = gw.config_path.as_ref().unwrap();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_key_removed_from_the_file_is_revoked_without_restart() {
    let both = config(&format!(
        "[[tenants]]\nid = \"acme\"\nkeys = [\"{}\", \"{}\"]\n",
        digest("sk-a1"),
        digest("sk-a2")
    ));
    let gw = TestGateway::start(Options {
        config: Some(&both),
        ..Options::default()
    });
    assert_eq!(gw.get("/v1/models", Some("sk-a2")).await.0, 200);
    rewrite(&gw, &config(&tenant("acme", "sk-a1", "")));
    assert!(
        eventually(async || gw.get("/v1/models", Some("sk-a2")).await.0 == 401).await,
        "revoked"
    );
    assert_eq!(gw.get("/v1/models", Some("sk-a1")).await.0, 200);
    // A broken file keeps the previous tenants.
    rewrite(&gw, "this is not toml [");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.get("/v1/models", Some("sk-a1")).await.0, 200);
}

#[tokio::test]
async fn requests_per_minute_let_the_burst_through_and_refuse_the_rest() {
    let gw = TestGateway::start(Options {
        config: Some(&config(&tenant(
            "burst",
            "sk-b",
            "requests_per_minute = 60",
        ))),
        ..Options::default()
    });
    let client = gw.client();
    let sends = (0..100).map(|_| {
        client
            .post(gw.url("/v1/completions"))
            .bearer_auth("sk-b")
            .body(completion(1))
            .send()
    });
    let responses = futures::future::join_all(sends).await;
    let mut ok = 0;
    let mut limited = 0;
    for r in responses {
        let r = r.unwrap();
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "60");
        assert!(r.headers().contains_key("x-ratelimit-remaining-requests"));
        assert!(r.headers().contains_key("x-ratelimit-reset-requests"));
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert!(
                    r.headers()["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                        >= 1
                );
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["error"]["type"], "rate_limit_exceeded");
            }
            s => panic!("unexpected status {s}"),
        }
    }
    // GCRA with a burst of the whole minute: 60, plus one cell per second the burst lasted
    // (the 100 requests are admitted within a couple of seconds at most).
    assert_eq!(ok + limited, 100);
    assert!((60..=63).contains(&ok), "{ok} admitted");
}

#[tokio::test]
async fn token_reservations_are_refused_when_too_large_and_refunded_when_unused() {
    let gw = TestGateway::start(Options {
        config: Some(&config(&tenant("small", "sk-s", "tokens_per_minute = 300"))),
        ..Options::default()
    });
    let chat = |max_tokens: u64| {
        json!({"model": MODEL, "max_tokens": max_tokens, "temperature": 0,
               "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}]})
        .to_string()
    };
    // max_tokens alone exceeds the tenant's whole minute.
    let (status, body) = gw
        .post_raw("/v1/chat/completions", chat(400), Some("sk-s"))
        .await;
    assert_eq!(status, 429, "{body}");
    // ~40 prompt + 120 reserved; the answer stops after a few tokens and the rest comes back.
    let (status, first) = gw
        .post_raw("/v1/chat/completions", chat(120), Some("sk-s"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(first["choices"][0]["finish_reason"], "stop");
    assert!(first["usage"]["completion_tokens"].as_u64().unwrap() < 30);
    // Without the refund only ~140 tokens would be left and this would be refused.
    let (status, _) = gw
        .post_raw("/v1/chat/completions", chat(120), Some("sk-s"))
        .await;
    assert_eq!(status, 200, "the unused reservation was returned");
    // Two reservations outstanding at once do not fit.
    let (status, _) = gw
        .post_raw("/v1/chat/completions", chat(250), Some("sk-s"))
        .await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn max_concurrent_admits_two_and_frees_a_slot_on_disconnect() {
    let gw = TestGateway::start(Options {
        config: Some(&config(&tenant("pair", "sk-p", "max_concurrent = 2"))),
        ..Options::default()
    });
    let client = gw.client();
    let long = json!({"model": MODEL, "prompt": "Tell a long story", "max_tokens": 3000,
                      "ignore_eos": true, "stream": true})
    .to_string();
    let open = || {
        client
            .post(gw.url("/v1/completions"))
            .bearer_auth("sk-p")
            .body(long.clone())
            .send()
    };
    let mut first = open().await.unwrap();
    let mut second = open().await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    // Both streams are producing.
    first.chunk().await.unwrap().unwrap();
    second.chunk().await.unwrap().unwrap();
    for _ in 0..3 {
        let r = open().await.unwrap();
        assert_eq!(r.status(), 429);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["type"], "rate_limit_exceeded");
    }
    drop(first); // the client hangs up
    assert!(
        eventually(async || gw
            .post_raw("/v1/completions", completion(1), Some("sk-p"))
            .await
            .0
            == 200)
        .await,
        "a slot was freed by the disconnect"
    );
    drop(second);
}

/// A streamed completion of `max_tokens` tokens (EOS ignored) for `key`, once its first chunk
/// has arrived: a request in flight.
async fn open_stream(gw: &TestGateway, key: &str, max_tokens: usize) -> reqwest::Response {
    let body = json!({"model": MODEL, "prompt": "Once", "max_tokens": max_tokens,
                      "ignore_eos": true, "stream": true});
    let mut stream = gw
        .client()
        .post(gw.url("/v1/completions"))
        .bearer_auth(key)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    stream.chunk().await.unwrap().unwrap();
    stream
}

#[tokio::test]
async fn edited_limits_apply_while_an_in_flight_stream_completes() {
    let gw = TestGateway::start(Options {
        config: Some(&config(&tenant("edit", "sk-e", ""))),
        ..Options::default()
    });
    let stream = open_stream(&gw, "sk-e", 64).await;
    rewrite(&gw, &config(&tenant("edit", "sk-e", "daily_tokens = 1")));
    assert!(
        eventually(async || {
            let (status, body) = gw
                .post_raw("/v1/completions", completion(1), Some("sk-e"))
                .await;
            status == 429 && body["error"]["type"] == "insufficient_quota"
        })
        .await,
        "the new budget applies"
    );
    // The stream admitted before the edit runs to its end.
    let rest = stream.bytes().await.unwrap();
    let text = String::from_utf8(rest.to_vec()).unwrap();
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));
}

/// A reload that changes a tenant's limits while its request runs must not lock it out: the
/// running request gives its concurrency slot back to the counter the new limits read (it
/// used to stay counted forever, and every later request got 429).
#[tokio::test]
async fn a_limit_change_during_a_request_does_not_lock_the_tenant_out() {
    let gw = TestGateway::start(Options {
        config: Some(&config(&tenant("busy", "sk-busy", "max_concurrent = 1"))),
        ..Options::default()
    });
    let stream = open_stream(&gw, "sk-busy", 48).await;
    rewrite(
        &gw,
        &config(&tenant(
            "busy",
            "sk-busy",
            "max_concurrent = 1\nrequests_per_minute = 1000",
        )),
    );
    // The new limits are in force (their header shows) while the stream still holds the slot.
    assert!(
        eventually(async || {
            let response = gw
                .client()
                .get(gw.url("/v1/models"))
                .bearer_auth("sk-busy")
                .send()
                .await
                .unwrap();
            response
                .headers()
                .get("x-ratelimit-limit-requests")
                .is_some()
        })
        .await,
        "the reload applies"
    );
    let rest = stream.bytes().await.unwrap();
    assert!(String::from_utf8(rest.to_vec()).unwrap().contains("[DONE]"));
    // The slot is free again under the new limits.
    assert!(
        eventually(async || {
            gw.post_raw("/v1/completions", completion(1), Some("sk-busy"))
                .await
                .0
                == 200
        })
        .await,
        "the tenant is not locked out after the stream ends"
    );
}

/// A request the engine refuses after admission (here: longer than the context window) is
/// charged nothing (issue 14, item 6): it used to add its prompt tokens to the day's usage.
/// The budget holds the whole request (prompt + `max_tokens` are reserved against the day at
/// admission since issue 30), so it is the engine that refuses it.
#[tokio::test]
async fn a_request_refused_after_admission_is_not_charged() {
    let gw = TestGateway::start(Options {
        config: Some(&config(&tenant(
            "frugal",
            "sk-frugal",
            "daily_tokens = 10000000",
        ))),
        ..Options::default()
    });
    let huge =
        json!({"model": MODEL, "prompt": "Hello there", "max_tokens": 1_000_000}).to_string();
    let (status, body) = gw
        .post_raw("/v1/completions", huge, Some("sk-frugal"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");
    let frugal = gw.admin_tenant("sk-admin", "frugal").await;
    let live = &frugal["live"];
    assert_eq!(live["tokens_used_today"], 0, "{frugal}");
    assert_eq!(live["in_flight"], 0, "{frugal}");
}

/// An empty config file (or one caught half-written) used to be accepted as "no tenants": every
/// key, the admin's included, got 401 until the file was fixed (issue 14, item 3). A reload
/// that would leave no tenant or no admin key is refused unless the file says it is meant.
#[tokio::test]
async fn a_reload_that_would_lock_everyone_out_is_refused_unless_meant() {
    let gw = TestGateway::start(Options {
        config: Some(&config(&tenant("keep", "sk-keep", ""))),
        capture_stderr: true,
        ..Options::default()
    });
    let refusals = || {
        gw.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("config reload refused"))
            .count()
    };
    let models = async |key: &str| gw.get("/v1/models", Some(key)).await.0;
    rewrite(&gw, "");
    assert!(
        eventually(async || refusals() == 1).await,
        "the empty file is refused"
    );
    assert_eq!(models("sk-keep").await, 200);
    // Tenants but no admin key: refused too.
    rewrite(
        &gw,
        &format!(
            "[[models]]\nid = \"{MODEL}\"\n{}",
            tenant("keep", "sk-keep", "")
        ),
    );
    assert!(
        eventually(async || refusals() == 2).await,
        "no admin key is refused"
    );
    assert_eq!(gw.get("/admin/tenants", Some("sk-admin")).await.0, 200);
    // Meant: the tenants go.
    rewrite(&gw, &format!("allow_empty_reload = true\n{}", config("")));
    assert!(
        eventually(async || models("sk-keep").await == 401).await,
        "an explicit empty reload applies"
    );
}

/// At trace level, a log file in the config's folder made the config watcher log its own
/// events in a loop (issue 14, item 9): the watcher's library stays at warn unless named.
#[tokio::test]
async fn the_config_watcher_does_not_log_other_files_events_at_trace_level() {
    let gw = TestGateway::start(Options {
        config: Some(&config(&tenant("t", "sk-t", ""))),
        capture_stderr: true,
        env: vec![("RUST_LOG", "trace".to_string())],
        ..Options::default()
    });
    let folder = gw
        .config_path
        .as_ref()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    for i in 0..20 {
        std::fs::write(folder.join("gateway.log"), format!("line {i}\n")).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A change to the config itself is still seen.
    rewrite(
        &gw,
        &config(&tenant("t", "sk-t", "").replace("\"t\"", "\"t2\"")),
    );
    assert!(
        eventually(async || {
            let (_, body) = gw.get("/v1/models", Some("sk-t")).await;
            body["data"].is_array()
        })
        .await
    );
    let lines = gw.stderr.lock().unwrap().clone();
    let from_watcher = lines.iter().filter(|l| l.contains("notify")).count();
    assert_eq!(from_watcher, 0, "{:?}", &lines[..lines.len().min(20)]);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("TRACE") || l.contains("DEBUG")),
        "trace is on"
    );
}

#[tokio::test]
async fn admin_routes_need_the_admin_key_and_report_usage() {
    let gw = TestGateway::start(Options {
        config: Some(&config(
            &(tenant("lab", "sk-lab", "requests_per_minute = 1000\nweight = 2")
                + &tenant("idle", "sk-idle", "")),
        )),
        ..Options::default()
    });
    assert_eq!(
        gw.post_raw("/v1/completions", completion(3), Some("sk-lab"))
            .await
            .0,
        200
    );
    assert_eq!(gw.get("/admin/tenants", None).await.0, 401);
    assert_eq!(gw.get("/admin/tenants", Some("sk-nobody")).await.0, 401);
    let (status, body) = gw.get("/admin/tenants", Some("sk-lab")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("admin_key_required"))
    );
    let lab = gw.admin_tenant("sk-admin", "lab").await;
    assert_eq!(lab["limits"]["requests_per_minute"], 1000);
    assert_eq!(lab["limits"]["weight"], 2.0);
    assert_eq!(lab["live"]["in_flight"], 0);
    let (status, usage) = gw.get("/admin/usage", Some("sk-admin")).await;
    assert_eq!(status, 200);
    let lab = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "lab")
        .unwrap();
    assert_eq!(lab["requests"], 1);
    assert_eq!(lab["completion_tokens"], 3);
    assert!(lab["prompt_tokens"].as_u64().unwrap() > 0);
}

/// With one running slot, a tenant allowed one waiting request gets 429 `queue_full` (with
/// `Retry-After`) for the next; a batch-class tenant meeting that backlog is shed with 503
/// `overloaded`. Neither refusal is charged, and the per-tenant engine metrics count them.
#[tokio::test]
async fn bounded_queues_refuse_with_retry_after_and_batch_is_shed() {
    let models = format!(
        "admin_keys = [\"{}\"]\n[[models]]\nid = \"{MODEL}\"\nmax_running = 1\nshed_batch_above = 1\n",
        digest("sk-admin")
    );
    let config = models
        + &tenant("clinic", "sk-c", "max_waiting = 1")
        + &tenant(
            "lab",
            "sk-l",
            "priority = \"batch\"\nmax_running_share = 0.5",
        )
        + &tenant("desk", "sk-d", "");
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    // One runs (its first chunk came) and one waits behind it.
    let running = open_stream(&gw, "sk-c", 3000).await;
    let body = json!({"model": MODEL, "prompt": "Twice", "max_tokens": 3000,
                      "ignore_eos": true, "stream": true});
    let waiting = gw
        .client()
        .post(gw.url("/v1/completions"))
        .bearer_auth("sk-c")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(waiting.status(), 200);

    let refused = gw
        .client()
        .post(gw.url("/v1/completions"))
        .bearer_auth("sk-c")
        .body(completion(4))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let error: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "queue_full", "{error}");
    assert_eq!(error["error"]["type"], "rate_limit_exceeded");

    let shed = gw
        .client()
        .post(gw.url("/v1/completions"))
        .bearer_auth("sk-l")
        .body(completion(4))
        .send()
        .await
        .unwrap();
    assert_eq!(shed.status(), 503);
    assert!(shed.headers().contains_key("retry-after"));
    let error: serde_json::Value = shed.json().await.unwrap();
    assert_eq!(error["error"]["code"], "overloaded", "{error}");

    // A request may lower its key's class (and is then shed as batch work), not raise it.
    let post = |key: &'static str, priority: &'static str| {
        let body = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 4, "stream": true,
                          "priority": priority});
        gw.client()
            .post(gw.url("/v1/completions"))
            .bearer_auth(key)
            .body(body.to_string())
            .send()
    };
    let demoted = post("sk-d", "batch").await.unwrap();
    assert_eq!(demoted.status(), 503);
    let error: serde_json::Value = demoted.json().await.unwrap();
    assert_eq!(error["error"]["code"], "overloaded", "{error}");
    let as_configured = post("sk-d", "interactive").await.unwrap();
    assert_eq!(as_configured.status(), 200);
    drop(as_configured);
    let raised = post("sk-l", "interactive").await.unwrap();
    assert_eq!(raised.status(), 400);
    let error: serde_json::Value = raised.json().await.unwrap();
    assert_eq!(error["error"]["code"], "priority_not_allowed", "{error}");
    assert_eq!(error["error"]["param"], "priority", "{error}");

    let metrics = gw.metrics_text().await;
    let sample = |name: &str, tenant: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("tenant=\"{tenant}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} for {tenant}"))
    };
    assert_eq!(sample("gateway_engine_tenant_refused_total", "clinic"), 1.0);
    assert_eq!(sample("gateway_engine_tenant_refused_total", "lab"), 1.0);
    assert_eq!(sample("gateway_engine_tenant_refused_total", "desk"), 1.0);
    assert_eq!(
        sample("gateway_engine_tenant_waiting_sequences", "clinic"),
        1.0
    );
    assert_eq!(
        sample("gateway_engine_tenant_running_sequences", "clinic"),
        1.0
    );
    assert!(sample("gateway_engine_tenant_service_tokens_total", "clinic") > 0.0);
    assert!(sample("gateway_engine_tenant_queue_seconds_total", "clinic") >= 0.0);

    let lab = gw.admin_tenant("sk-admin", "lab").await;
    assert_eq!(lab["limits"]["priority"], "batch");
    assert_eq!(lab["limits"]["max_running_share"], 0.5);
    // Refusals cost nothing: nothing was generated for them.
    assert_eq!(lab["live"]["tokens_used_today"], 0);
    drop((running, waiting));
}

/// A Kubernetes ConfigMap volume: `gateway.toml -> ..data/gateway.toml`, `..data -> ..<ts>/`.
/// The kubelet publishes an update by writing a new `..<ts>/` directory and renaming a fresh
/// `..data_tmp` symlink over `..data`; the file's own name never changes.
fn configmap_publish(dir: &std::path::Path, generation: u32, contents: &str) {
    use std::os::unix::fs::symlink;
    let data = dir.join(format!("..2026_12_05_00_00_0{generation}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("gateway.toml"), contents).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(data.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if generation == 0 {
        symlink("..data/gateway.toml", dir.join("gateway.toml")).unwrap();
    } else {
        let old = dir.join(format!("..2026_12_05_00_00_0{}", generation - 1));
        std::fs::remove_dir_all(old).unwrap();
    }
}

#[tokio::test]
async fn a_configmap_update_by_symlink_swap_is_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let both = config(&format!(
        "[[tenants]]\nid = \"acme\"\nkeys = [\"{}\", \"{}\"]\n",
        digest("sk-c1"),
        digest("sk-c2")
    ));
    configmap_publish(dir.path(), 0, &both);
    let gw = TestGateway::start(Options {
        env: vec![(
            "GATEWAY_CONFIG",
            dir.path().join("gateway.toml").display().to_string(),
        )],
        ..Options::default()
    });
    assert_eq!(gw.get("/v1/models", Some("sk-c2")).await.0, 200);
    configmap_publish(dir.path(), 1, &config(&tenant("acme", "sk-c1", "")));
    assert!(
        eventually(async || gw.get("/v1/models", Some("sk-c2")).await.0 == 401).await,
        "the swapped ConfigMap was not reloaded"
    );
    assert_eq!(gw.get("/v1/models", Some("sk-c1")).await.0, 200);
}

/// The prompt tokens a chat request of `key` found in the prefix cache (its
/// `usage.prompt_tokens_details.cached_tokens`), or the error body if it was refused.
async fn cached_tokens(
    gw: &TestGateway,
    key: &str,
    model: &str,
    extra: serde_json::Value,
) -> Result<u64, serde_json::Value> {
    let system =
        "You answer for the registry of a court. Cite the rule, give the deadline, and say \
                  which office handles the filing; never give legal advice. "
            .repeat(3);
    let mut body = json!({
        "model": model,
        "max_tokens": 2,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": "When is the appeal deadline?"}
        ],
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, value) = gw
        .post_raw("/v1/chat/completions", body.to_string(), Some(key))
        .await;
    match status {
        200 => Ok(value["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .expect("usage.prompt_tokens_details.cached_tokens")),
        _ => Err(value),
    }
}

#[tokio::test]
async fn the_prefix_cache_is_each_tenants_own_unless_a_sharing_group_says_otherwise() {
    let tenants = [
        tenant("law-a", "sk-la", ""),
        tenant("law-b", "sk-lb", ""),
        tenant("clinic-1", "sk-c1", "prefix_cache_group = \"clinics\""),
        tenant("clinic-2", "sk-c2", "prefix_cache_group = \"clinics\""),
    ]
    .concat();
    let config = format!(
        "admin_keys = [\"{}\"]\n[[models]]\nid = \"{MODEL}\"\n[[models]]\nid = \"uncached\"\nprefix_cache = false\n{tenants}",
        digest("sk-admin")
    );
    let mut gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let none = json!({});
    assert_eq!(
        cached_tokens(&gw, "sk-la", MODEL, none.clone()).await,
        Ok(0)
    );
    // The same prompt from another tenant: nothing found.
    assert_eq!(
        cached_tokens(&gw, "sk-lb", MODEL, none.clone()).await,
        Ok(0)
    );
    let again = cached_tokens(&gw, "sk-la", MODEL, none.clone())
        .await
        .unwrap();
    assert!(again >= 48, "the tenant's own prompt is found: {again}");
    // Tenants of one group share.
    assert_eq!(
        cached_tokens(&gw, "sk-c1", MODEL, none.clone()).await,
        Ok(0)
    );
    assert_eq!(
        cached_tokens(&gw, "sk-c2", MODEL, none.clone()).await,
        Ok(again)
    );
    // A salt narrows the scope: another salt finds nothing, the same salt finds its own.
    let salted = |salt: &str| json!({"cache_salt": salt});
    assert_eq!(cached_tokens(&gw, "sk-c2", MODEL, salted("x")).await, Ok(0));
    assert_eq!(
        cached_tokens(&gw, "sk-c1", MODEL, salted("x")).await,
        Ok(again)
    );
    let refused = cached_tokens(&gw, "sk-c1", MODEL, salted(""))
        .await
        .unwrap_err();
    assert_eq!(refused["error"]["param"], "cache_salt");
    // A model with the cache off never finds anything.
    for _ in 0..2 {
        assert_eq!(
            cached_tokens(&gw, "sk-la", "uncached", none.clone()).await,
            Ok(0)
        );
    }
    // Streamed usage says the same.
    gw.key = "sk-lb".to_string();
    let events = gw
        .stream(
            "/v1/chat/completions",
            json!({
                "model": MODEL, "max_tokens": 2, "stream": true,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "When is the appeal deadline?"}],
            }),
        )
        .await;
    let usage = &events[events.len() - 2]["usage"];
    assert!(
        usage["prompt_tokens_details"]["cached_tokens"].is_u64(),
        "{usage}"
    );
    // Per-tenant metrics: law-b never hit; law-a and the second clinic did.
    let text = gw.metrics_text().await;
    let hits = |tenant: &str| -> f64 {
        let series = format!(
            "gateway_engine_tenant_prefix_cache_hit_tokens_total{{model=\"{MODEL}\",tenant=\"{tenant}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    assert_eq!(hits("law-b"), 0.0);
    assert_eq!(hits("law-a"), again as f64);
    assert_eq!(hits("clinic-2"), again as f64);
    assert!(gw.metric("gateway_engine_kv_blocks_cached").await > 0.0);
    assert!(
        gw.metric("gateway_engine_prefix_cache_query_tokens_total")
            .await
            > gw.metric("gateway_engine_prefix_cache_hit_tokens_total")
                .await
    );
}

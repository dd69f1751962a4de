//! The Files and Batch APIs end to end, on the real gateway and model with its control-plane
//! store: the official `openai` SDK unchanged (upload, create, poll, download, cancel), every
//! line answered and billed once (also across a SIGKILL and a restart mid-batch), and bad
//! input refused with errors that name the line.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{call, digest, Options, TestGateway, MODEL};
use serde_json::{json, Value};

const ADMIN: &str = "sk-batches-admin";
const ACME: &str = "sk-batches-acme";
const BETA: &str = "sk-batches-beta";

fn config(extra: &str) -> String {
    format!(
        "admin_keys = [\"{}\"]\n[control_plane]\nenabled = true\n[batches]\n{extra}\n\
         [[models]]\nid = \"{MODEL}\"\n\
         [[tenants]]\nid = \"acme\"\nkeys = [\"{}\"]\n[[tenants]]\nid = \"beta\"\nkeys = [\"{}\"]\n",
        digest(ADMIN),
        digest(ACME),
        digest(BETA)
    )
}

fn gateway(config: &str, data_dir: Option<&Path>) -> TestGateway {
    let mut gw = TestGateway::start(Options {
        config: Some(config),
        data_dir: data_dir.map(Path::to_path_buf),
        ..Options::default()
    });
    gw.key = ACME.to_string();
    gw
}

/// A batch file of `count` chat requests.
fn jsonl(count: usize, max_tokens: u32) -> String {
    (0..count)
        .map(|i| {
            json!({"custom_id": format!("line-{i}"), "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": MODEL, "max_tokens": max_tokens, "temperature": 0,
                            "messages": [{"role": "user", "content": format!("Count to {i}.")}]}})
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Uploads `content` as a batch file with `key`: `(status, body)`.
async fn upload(gw: &TestGateway, key: &str, content: String) -> (u16, Value) {
    let fields = [("purpose", "batch")];
    common::upload(
        gw,
        "/v1/files",
        key,
        &fields,
        content.into_bytes(),
        "requests.jsonl",
    )
    .await
}

async fn create_batch(gw: &TestGateway, key: &str, file: &str) -> (u16, Value) {
    call(
        gw,
        "POST",
        "/v1/batches",
        key,
        Some(json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"})),
    )
    .await
}

/// The content of `acme`'s file `id`.
async fn content(gw: &TestGateway, id: &Value) -> String {
    let path = format!("/v1/files/{}/content", id.as_str().unwrap());
    let response = gw
        .client()
        .get(gw.url(&path))
        .bearer_auth(ACME)
        .send()
        .await;
    response.unwrap().text().await.unwrap()
}

/// Polls batch `id` until `done` says so (a bound so a stuck batch fails the test).
async fn poll(gw: &TestGateway, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut batch = Value::Null;
    for _ in 0..1200 {
        let status;
        (status, batch) = call(gw, "GET", &format!("/v1/batches/{id}"), ACME, None).await;
        assert_eq!(status, 200, "{batch}");
        if done(&batch) {
            return batch;
        }
        let ended = ["completed", "failed", "expired", "cancelled"];
        assert!(
            !ended.contains(&batch["status"].as_str().unwrap_or_default()),
            "batch {id} ended otherwise: {batch}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("batch {id} did not get there: {batch}");
}

#[tokio::test]
async fn the_official_openai_sdk_runs_files_and_batches_unchanged() {
    let gw = gateway(&config(""), None);
    let seen = common::run_sdk_script("batches.py", &gw.base, ACME, MODEL).await;
    assert_eq!(seen["created_status"], "validating", "{seen}");
    let batch = &seen["batch"];
    assert_eq!(batch["status"], "completed", "{seen}");
    assert_eq!(
        batch["counts"],
        json!({"total": 12, "completed": 12, "failed": 0})
    );
    let wanted: Vec<String> = {
        let mut ids: Vec<String> = (0..12).map(|i| format!("line-{i}")).collect();
        ids.sort();
        ids
    };
    assert_eq!(batch["custom_ids"], json!(wanted), "every line once");
    assert_eq!(batch["status_codes"], json!([200]));
    assert_eq!(batch["objects"], json!(["chat.completion"]));
    assert_eq!(batch["error_file_id"], Value::Null);
    assert_eq!(seen["file"], json!({"purpose": "batch", "listed": true}));
    assert_eq!(seen["listed_batch"], true);
    assert_eq!(seen["cancel_status"], "cancelling", "{seen}");
    let cancelled = &seen["cancelled"];
    assert_eq!(cancelled["status"], "cancelled", "{seen}");
    assert_eq!(cancelled["codes"], json!(["batch_cancelled"]));
    let done = cancelled["counts"]["completed"].as_u64().unwrap();
    assert!(done < 300, "the cancel stopped it early: {seen}");
    assert_eq!(
        cancelled["error_lines"].as_u64().unwrap() + done,
        300,
        "{seen}"
    );
    assert_eq!(seen["deleted_listed"], false);
    // Every line of the completed batch has one ledger record, tagged with the batch.
    let (_, records) = gw.get("/admin/usage/records", Some(ADMIN)).await;
    let id = batch["id"].as_str().unwrap();
    let lines: Vec<&Value> = records["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["batch_id"] == id)
        .collect();
    assert_eq!(lines.len(), 12, "{records}");
    assert!(lines
        .iter()
        .all(|r| r["api"] == "batches" && r["tenant"] == "acme"));
}

#[tokio::test]
async fn a_batch_survives_a_sigkill_and_every_line_is_answered_and_billed_once() {
    let data = tempfile::tempdir().unwrap();
    let config = config("lease_secs = 2\npoll_interval_ms = 200\nconcurrency = 4");
    let mut gw = gateway(&config, Some(data.path()));
    let lines = 40;
    let (status, file) = upload(&gw, ACME, jsonl(lines, 24)).await;
    assert_eq!(status, 200, "{file}");
    let (status, batch) = create_batch(&gw, ACME, file["id"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{batch}");
    let id = batch["id"].as_str().unwrap().to_string();
    let before = poll(&gw, &id, |b| {
        b["request_counts"]["completed"].as_u64() >= Some(6)
    })
    .await;
    gw.kill_now();
    let done_before = before["request_counts"]["completed"].as_u64().unwrap();
    assert!(done_before < lines as u64, "killed mid-batch: {before}");
    // The dead replica's lease lapses first, so the new one takes the batch at its first look,
    // while its model is still loading: lines refused `model_not_ready` must try again and
    // find it ready.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut gw = TestGateway::start(Options {
        config: Some(&config),
        data_dir: Some(data.path().to_path_buf()),
        wait_ready: false,
        ..Options::default()
    });
    gw.key = ACME.to_string();
    let batch = poll(&gw, &id, |b| b["status"] == "completed").await;
    assert_eq!(
        batch["request_counts"],
        json!({"total": lines, "completed": lines, "failed": 0}),
        "{batch}"
    );
    let output = content(&gw, &batch["output_file_id"]).await;
    let mut ids: Vec<String> = output
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), lines, "every line answered once: {output}");
    let mut billed = billed_lines(&gw, &id).await;
    billed.sort();
    let count = billed.len();
    billed.dedup();
    assert_eq!(count, billed.len(), "no line billed twice");
    assert_eq!(count, lines, "every line billed");
}

#[tokio::test]
async fn bad_files_and_batches_are_refused_with_the_line_named() {
    let gw = gateway(
        &config("max_file_bytes = 20000\nmax_open_batches_per_tenant = 1"),
        None,
    );
    let good = jsonl(2, 2);
    for (content, wanted) in [
        (format!("{good}\n{{not json"), "Line 3: not a batch request"),
        (
            format!(
                "{good}\n{}",
                json!({"custom_id": "x", "method": "POST", "url": "/v1/audio/speech", "body": {"model": MODEL}})
            ),
            "Line 3: `url` `/v1/audio/speech`",
        ),
        (
            format!("{good}\n{}", jsonl(1, 2)),
            "Line 3: `custom_id` `line-0` appears twice",
        ),
    ] {
        let (status, body) = upload(&gw, ACME, content).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(wanted),
            "{body}"
        );
        assert_eq!(body["error"]["param"], "file");
    }
    let (status, body) = upload(&gw, ACME, jsonl(400, 2)).await;
    assert_eq!(status, 413, "{body}");
    // Another tenant's file is unknown to beta.
    let (status, file) = upload(&gw, ACME, good.clone()).await;
    assert_eq!(status, 200);
    let file_id = file["id"].as_str().unwrap();
    let (status, body) = create_batch(&gw, BETA, file_id).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        call(&gw, "GET", &format!("/v1/files/{file_id}"), BETA, None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(
            &gw,
            "GET",
            &format!("/v1/files/{file_id}/content"),
            BETA,
            None
        )
        .await
        .0,
        404
    );
    // A batch whose endpoint is not its lines'.
    let (status, body) = call(
        &gw,
        "POST",
        "/v1/batches",
        ACME,
        Some(json!({"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "24h"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Line 1:"),
        "{body}"
    );
    let (status, body) = call(
        &gw,
        "POST",
        "/v1/batches",
        ACME,
        Some(json!({"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["param"].clone()),
        (400, json!("endpoint"))
    );
    // One open batch at most here.
    let (status, first) = create_batch(&gw, ACME, file_id).await;
    assert_eq!(status, 200, "{first}");
    let (status, body) = create_batch(&gw, ACME, file_id).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "too_many_open_batches");
    // Beta cannot see, nor cancel, acme's batch.
    let id = first["id"].as_str().unwrap();
    assert_eq!(
        call(&gw, "GET", &format!("/v1/batches/{id}"), BETA, None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(&gw, "POST", &format!("/v1/batches/{id}/cancel"), BETA, None)
            .await
            .0,
        404
    );
    let (_, listed) = call(&gw, "GET", "/v1/batches", BETA, None).await;
    assert_eq!(listed["data"], json!([]));
    let finished = poll(&gw, id, |b| b["status"] == "completed").await;
    assert_eq!(finished["request_counts"]["completed"], 2);
    // A line whose own request is bad is answered in the error file, not retried forever.
    let bad_line = json!({"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
                          "body": {"model": MODEL, "temperature": 9, "messages": [{"role": "user", "content": "x"}]}});
    let (_, file) = upload(&gw, ACME, format!("{}\n{bad_line}", jsonl(1, 2))).await;
    let (status, batch) = create_batch(&gw, ACME, file["id"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{batch}");
    let done = poll(&gw, batch["id"].as_str().unwrap(), |b| {
        b["status"] == "completed"
    })
    .await;
    assert_eq!(
        done["request_counts"],
        json!({"total": 2, "completed": 1, "failed": 1})
    );
    let errors = content(&gw, &done["error_file_id"]).await;
    let line: Value = serde_json::from_str(errors.trim()).unwrap();
    assert_eq!(line["custom_id"], "bad");
    assert_eq!(line["response"]["status_code"], 400);
    assert_eq!(line["response"]["body"]["error"]["param"], "temperature");
}

#[tokio::test]
async fn without_the_store_the_files_api_says_so() {
    let config = format!(
        "[[models]]\nid = \"{MODEL}\"\n[[tenants]]\nid = \"acme\"\nkeys = [\"{}\"]\n",
        digest(ACME)
    );
    let gw = gateway(&config, None);
    let (status, body) = call(&gw, "GET", "/v1/files", ACME, None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "store_not_configured");
}

/// The lines of batch `id` billed in the ledger (`request_id`s, one per record).
async fn billed_lines(gw: &TestGateway, id: &str) -> Vec<String> {
    let (_, records) = gw.get("/admin/usage/records", Some(ADMIN)).await;
    records["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["batch_id"] == id)
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_takes_over_the_batch_of_one_killed_mid_run() {
    let postgres = ledger::test_server::PostgresServer::start();
    let (store, ledger) = (postgres.database("control"), postgres.database("ledger"));
    // Both replicas share the store and the ledger; the second looks for batches less often,
    // so the first is the one that takes the batch (the logs say which did).
    let replica = |poll_ms: u32| {
        let config = config(&format!("lease_secs = 2\npoll_interval_ms = {poll_ms}\nconcurrency = 4"))
            .replace(
                "[control_plane]\nenabled = true\n",
                &format!("[control_plane]\nenabled = true\nurl = \"{store}\"\n[ledger]\nurl = \"{ledger}\"\n"),
            );
        let mut gw = TestGateway::start(Options {
            config: Some(&config),
            capture_stderr: true,
            env: vec![("RUST_LOG", "warn,gateway::routes::batch_runner=info".into())],
            ..Options::default()
        });
        gw.key = ACME.to_string();
        gw
    };
    let mut a = replica(200);
    let mut b = replica(1500);
    let lines = 40;
    let (status, file) = upload(&a, ACME, jsonl(lines, 24)).await;
    assert_eq!(status, 200, "{file}");
    let (status, batch) = create_batch(&b, ACME, file["id"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{batch}");
    let id = batch["id"].as_str().unwrap().to_string();
    let before = poll(&b, &id, |b| {
        b["request_counts"]["completed"].as_u64() >= Some(4)
    })
    .await;
    let runs = |gw: &TestGateway| {
        gw.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("running a batch") && l.contains(id.as_str()))
    };
    let (survivor, killed_a) = match (runs(&a), runs(&b)) {
        (true, false) => {
            a.kill_now();
            (&b, true)
        }
        (false, true) => {
            b.kill_now();
            (&a, false)
        }
        other => panic!("one replica runs the batch: {other:?}"),
    };
    assert!(before["request_counts"]["completed"].as_u64().unwrap() < lines as u64);
    let done = poll(survivor, &id, |b| b["status"] == "completed").await;
    assert_eq!(done["request_counts"]["completed"], lines, "{done}");
    assert!(
        runs(survivor),
        "the survivor took the batch over (killed A: {killed_a})"
    );
    let mut billed = billed_lines(survivor, &id).await;
    billed.sort();
    let count = billed.len();
    billed.dedup();
    assert_eq!(
        (count, billed.len()),
        (lines, lines),
        "every line billed once in the shared ledger"
    );
}

#[tokio::test]
async fn batch_lines_are_billed_at_the_batch_price_and_storage_is_bounded() {
    let gw = gateway(&config("max_storage_bytes_per_tenant = 3000"), None);
    // One minor unit per token, in and out; half price in batches.
    let (status, price) = call(
        &gw,
        "POST",
        "/admin/prices",
        ADMIN,
        Some(
            json!({"model": MODEL, "input_per_mtok": 1_000_000, "output_per_mtok": 1_000_000,
                    "batch_discount_percent": 50}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{price}");
    // An interactive request, once the replica has the price: full price.
    let chat =
        json!({"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]});
    let mut full = None;
    for _ in 0..50 {
        let response = gw
            .client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(ACME)
            .json(&chat)
            .send()
            .await
            .unwrap();
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let (_, records) = gw.get("/admin/usage/records", Some(ADMIN)).await;
        let record = records["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["request_id"] == id.as_str())
            .cloned();
        if let Some(record) = record.filter(|r| !r["cost_micros"].is_null()) {
            full = Some(record);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let full = full.expect("the price reached the replica");
    let tokens =
        |r: &Value| r["prompt_tokens"].as_i64().unwrap() + r["completion_tokens"].as_i64().unwrap();
    assert_eq!(
        full["cost_micros"].as_i64().unwrap(),
        tokens(&full) * 1_000_000
    );
    assert_eq!(full["api"], "chat.completions");
    // The same request as a batch line: half of that.
    let (status, file) = upload(&gw, ACME, jsonl(6, 3)).await;
    assert_eq!(status, 200, "{file}");
    // The tenant's files are bounded together (3,000 bytes here): a second file as large,
    // which alone would fit, is refused; another tenant's room is its own.
    let (status, body) = upload(&gw, ACME, jsonl(6, 3)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "storage_limit_exceeded");
    let (status, body) = upload(&gw, BETA, jsonl(2, 3)).await;
    assert_eq!(status, 200, "{body}");
    let (_, batch) = create_batch(&gw, ACME, file["id"].as_str().unwrap()).await;
    let id = batch["id"].as_str().unwrap();
    poll(&gw, id, |b| b["status"] == "completed").await;
    let (_, records) = gw.get("/admin/usage/records", Some(ADMIN)).await;
    let lines: Vec<&Value> = records["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["batch_id"] == id)
        .collect();
    assert_eq!(lines.len(), 6);
    for line in lines {
        assert_eq!(
            line["cost_micros"].as_i64().unwrap(),
            tokens(line) * 1_000_000 / 2,
            "{line}"
        );
    }
}

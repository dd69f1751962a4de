//! The adapter registry (`/admin/adapters`) over two real replicas sharing one PostgreSQL
//! control-plane store: a tenant-admin uploads its tenant's adapter on one replica and the other
//! fetches it from the store and serves it; a file that does not fit the model is a 400 naming
//! the tensor and is never stored; another tenant can neither use, list nor learn of it; an
//! operator shares one by path, only inside the configured directory; deleting one stops its use
//! on both replicas and unloads it from their engines.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::lora::{ask, text, write_adapter, write_adapter_with_input};
use common::{call, digest, Options, TestGateway, MODEL};
use ledger::test_server::PostgresServer;
use serde_json::{json, Value};

const OPERATOR: &str = "sk-registry-operator";
const ACME: &str = "sk-registry-acme";
const BETA: &str = "sk-registry-beta";

/// Polls `check` until it holds (a replica learns of a write within its poll interval).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn upload(
    gw: &TestGateway,
    key: &str,
    fields: &[(&str, &str)],
    file: Vec<u8>,
) -> (u16, Value) {
    common::upload(gw, "/admin/adapters", key, fields, file, "adapter.gguf").await
}

async fn loaded(gw: &TestGateway, adapter: &str) -> bool {
    gw.metrics_text()
        .await
        .contains(&format!("adapter=\"{adapter}\"}} 1"))
}

/// Sends only the head of an upload that declares `length` bytes, and reads the answer's head.
async fn declared_upload(gw: &TestGateway, key: &str, length: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = gw.url("").replace("http://", "");
    let address = address.trim_end_matches('/');
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /admin/adapters HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {key}\r\n\
         content-type: multipart/form-data; boundary=x\r\ncontent-length: {length}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 512];
    let n = socket.read(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn adapters_are_registered_shared_across_replicas_private_and_deleted() {
    let postgres = PostgresServer::start();
    let store = postgres.database("adapters");
    let dir = tempfile::tempdir().unwrap();
    let shared_dir = dir.path().join("operator-adapters");
    std::fs::create_dir(&shared_dir).unwrap();
    for (name, seed) in [("radiology.gguf", 1), ("other.gguf", 2)] {
        write_adapter(&dir.path().join(name), seed);
    }
    write_adapter(&shared_dir.join("shared.gguf"), 3);
    // Inputs of 1000 where the model's down projection reads 1536.
    write_adapter_with_input(&dir.path().join("misfit.gguf"), 4, 1000);
    let config = format!(
        "admin_keys = [\"{}\"]\n\
         [control_plane]\nenabled = true\nurl = \"{store}\"\npoll_interval_ms = 200\n\
         [adapter_registry]\ndirectory = \"{}\"\nmax_file_bytes = 4000000\nmax_per_tenant = 2\n\
         [[models]]\nid = \"{MODEL}\"\n\
         [[tenants]]\nid = \"acme\"\nkeys = [\"{}\"]\n[[tenants]]\nid = \"beta\"\nkeys = [\"{}\"]\n",
        digest(OPERATOR),
        shared_dir.display(),
        digest(ACME),
        digest(BETA),
    );
    let a = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let b = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let mut admins = Vec::new();
    for tenant in ["acme", "beta"] {
        let (status, issued) = call(
            &a,
            "POST",
            &format!("/admin/tenants/{tenant}/keys"),
            OPERATOR,
            Some(json!({"role": "tenant_admin"})),
        )
        .await;
        assert_eq!(status, 201, "{issued}");
        admins.push(issued["key"].as_str().unwrap().to_string());
    }
    let (acme_admin, beta_admin) = (admins[0].as_str(), admins[1].as_str());
    let (status, base) = ask(&a, ACME, MODEL).await;
    assert_eq!(status, 200, "{base}");

    // A file that does not fit the model: 400 naming the tensor, nothing registered.
    let (status, body) = upload(
        &a,
        acme_admin,
        &[("id", "misfit"), ("model", MODEL)],
        read(&dir.path().join("misfit.gguf")),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "file", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("ffn_down.weight.lora_a") && message.contains("[rank, 1536]"),
        "{message}"
    );
    let (status, body) = upload(
        &a,
        acme_admin,
        &[("id", "garbage"), ("model", MODEL)],
        b"GGUF\x03\x00\x00\x00 and then nothing".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // The tenant-admin uploads its tenant's adapter on replica A.
    let radiology = read(&dir.path().join("radiology.gguf"));
    let (status, registered) = upload(
        &a,
        acme_admin,
        &[("id", "radiology"), ("model", MODEL)],
        radiology.clone(),
    )
    .await;
    assert_eq!(status, 201, "{registered}");
    assert_eq!(registered["tenant"], "acme");
    assert_eq!(registered["rank"], 8);
    assert_eq!(registered["bytes"], radiology.len());
    assert_eq!(registered["source"]["kind"], "upload");

    // What a tenant-admin may not do: another tenant's, a taken id, a file by path, one over
    // the size limit.
    let other = read(&dir.path().join("other.gguf"));
    let refusals = [
        (vec![("id", "x"), ("model", MODEL), ("tenant", "beta")], 403),
        (vec![("id", "radiology"), ("model", MODEL)], 409),
        (vec![("id", MODEL), ("model", MODEL)], 409),
        (vec![("id", "a:b"), ("model", MODEL)], 400),
        (vec![("id", "x"), ("model", "no-such-model")], 400),
    ];
    for (fields, wanted) in refusals {
        let (status, body) = upload(&a, acme_admin, &fields, other.clone()).await;
        assert_eq!(status, wanted, "{fields:?}: {body}");
    }
    let (status, body) = call(
        &a,
        "POST",
        "/admin/adapters",
        acme_admin,
        Some(json!({"id": "by-path", "model": MODEL,
                    "path": shared_dir.join("shared.gguf").display().to_string()})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Refused on its declared length, before a byte of it is read.
    let head = declared_upload(&a, acme_admin, 4_500_000).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // Replica B fetches it from the store and serves it: the same answer as A's, not the
    // base model's.
    eventually("replica B serves the uploaded adapter", || async {
        ask(&b, ACME, "radiology").await.0 == 200
    })
    .await;
    let (_, on_b) = ask(&b, ACME, "radiology").await;
    let (status, on_a) = ask(&a, ACME, &format!("{MODEL}:radiology")).await;
    assert_eq!(status, 200, "{on_a}");
    assert_eq!(text(&on_a), text(&on_b));
    assert_ne!(text(&on_a), text(&base), "the adapter changed nothing");
    assert!(loaded(&a, "radiology").await && loaded(&b, "radiology").await);

    // Beta can neither use, list nor learn of it, on either replica.
    for gw in [&a, &b] {
        let (status, body) = ask(gw, BETA, "radiology").await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "model_not_found");
        let (_, models) = call(gw, "GET", "/v1/models", BETA, None).await;
        assert!(!models.to_string().contains("radiology"), "{models}");
        let (_, listed) = call(gw, "GET", "/admin/adapters", beta_admin, None).await;
        assert!(!listed.to_string().contains("radiology"), "{listed}");
        for method in ["GET", "DELETE"] {
            let (status, body) =
                call(gw, method, "/admin/adapters/radiology", beta_admin, None).await;
            assert_eq!(status, 404, "{method}: {body}");
        }
    }
    let (_, models) = call(&b, "GET", "/v1/models", ACME, None).await;
    assert!(models.to_string().contains("radiology"), "{models}");

    // An operator shares one by path, only from inside the adapter directory.
    let (status, body) = call(
        &a,
        "POST",
        "/admin/adapters",
        OPERATOR,
        Some(json!({"id": "outside", "model": MODEL,
                    "path": dir.path().join("other.gguf").display().to_string()})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "path", "{body}");
    let (status, body) = call(
        &a,
        "POST",
        "/admin/adapters",
        OPERATOR,
        Some(json!({"id": "shared-tone", "model": MODEL,
                    "path": shared_dir.join("shared.gguf").display().to_string()})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(body.get("tenant").is_none(), "{body}");
    eventually("beta uses the shared adapter on B", || async {
        ask(&b, BETA, "shared-tone").await.0 == 200
    })
    .await;

    // Deleted: no replica serves it, and both engines unload it.
    let (status, body) = call(&a, "DELETE", "/admin/adapters/radiology", acme_admin, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], true);
    assert_eq!(ask(&a, ACME, "radiology").await.0, 404);
    eventually("replica B stops serving it", || async {
        ask(&b, ACME, "radiology").await.0 == 404
    })
    .await;
    for gw in [&a, &b] {
        eventually("the engine unloads it", || async {
            !loaded(gw, "radiology").await
        })
        .await;
    }
    // The id may be registered again, here with `gateway admin`, with another file: it is
    // another adapter (its own weights, never the deleted one's cached blocks).
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["admin", "--url", &a.url(""), "--key", acme_admin])
        .args([
            "adapters",
            "upload",
            "radiology",
            "--model",
            MODEL,
            "--file",
        ])
        .arg(dir.path().join("other.gguf"))
        .output()
        .unwrap();
    assert!(cli.status.success(), "{cli:?}");
    let mut again = Value::Null;
    for gw in [&a, &b] {
        eventually("the new radiology serves", || async {
            ask(gw, ACME, "radiology").await.0 == 200
        })
        .await;
        let (_, body) = ask(gw, ACME, "radiology").await;
        assert_ne!(text(&body), text(&on_a), "the deleted file's answer");
        again = body;
    }
    assert_ne!(text(&again), text(&base));

    // The audit log tells who did what.
    let (_, audit) = call(&a, "GET", "/admin/audit?tenant=acme", OPERATOR, None).await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == "adapter:radiology")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["adapter.create", "adapter.delete", "adapter.create"],
        "{audit}"
    );
}

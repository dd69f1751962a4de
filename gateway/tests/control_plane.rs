//! The control plane end to end: tenants, projects and keys changed live through `/admin` by
//! role, audited, on SQLite with one process and on one real PostgreSQL shared by two replicas
//! (with Redis counting the limits); the store stopped and started again; `gateway admin`.
//! The synthetic model keeps the load cheap.

mod common;

use std::time::{Duration, Instant};

use common::{call, digest, Options, TestGateway};
use ledger::test_server::PostgresServer;
use redis_quotas::test_server::RedisServer;
use serde_json::{json, Value};

const OPERATOR: &str = "sk-operator-0123456789";

/// A completion with `key`: its status.
async fn complete(gateway: &TestGateway, key: &str) -> u16 {
    let body = json!({"model": "bench", "prompt": "Count the sheep", "max_tokens": 4});
    call(gateway, "POST", "/v1/completions", key, Some(body))
        .await
        .0
}

/// Issues a key and returns `(id, plaintext)`.
async fn issue(gateway: &TestGateway, admin: &str, tenant: &str, body: Value) -> (String, String) {
    let (status, key) = call(
        gateway,
        "POST",
        &format!("/admin/tenants/{tenant}/keys"),
        admin,
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    assert!(
        key.get("digest").is_none(),
        "the digest is never shown: {key}"
    );
    (
        key["id"].as_str().unwrap().to_string(),
        key["key"].as_str().unwrap().to_string(),
    )
}

/// Polls `check` until it holds or `within` passed; how long it took.
async fn within<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn sqlite_config() -> String {
    format!(
        "admin_keys = [\"{admin}\"]\n\
         [control_plane]\nenabled = true\nlast_used_flush_secs = 1\n\
         [[models]]\nid = \"bench\"\nkind = \"synthetic\"\n\
         [models.synthetic]\ntokens_per_second = 2000\n\
         [[models]]\nid = \"other\"\nkind = \"synthetic\"\n\
         [models.synthetic]\ntokens_per_second = 2000\n\
         [[tenants]]\nid = \"seeded\"\nkeys = [\"{seeded}\"]\n",
        admin = digest(OPERATOR),
        seeded = digest("sk-seeded-tenant"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn one_process_on_sqlite_by_role_and_audited() {
    let data = tempfile::tempdir().unwrap();
    let config = sqlite_config();
    let gw = TestGateway::start(Options {
        config: Some(&config),
        data_dir: Some(data.path().to_path_buf()),
        ..Options::default()
    });
    let op = OPERATOR;
    // Every write that succeeds below adds one audit entry: counted here.
    let mut writes = 1; // the seed of `seeded` from the file

    // Seeded from the file: the store is the source now, and says so.
    let response = gw
        .client()
        .get(gw.url("/admin/tenants"))
        .bearer_auth(op)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-gateway-tenant-source"]
            .to_str()
            .unwrap(),
        "store"
    );
    let tenants: Value = response.json().await.unwrap();
    assert_eq!(tenants["source"], "store");
    assert_eq!(complete(&gw, "sk-seeded-tenant").await, 200);

    // An operator onboards two institutions, and a project with limits of its own.
    for body in [
        json!({"id": "acme", "name": "ACME Hospital", "limits": {"max_concurrent": 8}}),
        json!({"id": "beta", "name": "Beta Law"}),
    ] {
        let (status, tenant) = call(&gw, "POST", "/admin/tenants", op, Some(body)).await;
        assert_eq!(status, 201, "{tenant}");
        writes += 1;
    }
    let (status, project) = call(
        &gw,
        "POST",
        "/admin/tenants/acme/projects",
        op,
        Some(json!({"id": "radiology", "weight": 3, "limits": {"requests_per_minute": 3}, "models": ["bench"]})),
    )
    .await;
    assert_eq!(status, 201, "{project}");
    writes += 1;
    let (radiology_id, radiology) = issue(&gw, op, "acme", json!({"project": "radiology"})).await;
    writes += 1;
    let (beta_id, beta) = issue(&gw, op, "beta", json!({})).await;
    writes += 1;
    assert_eq!(complete(&gw, &beta).await, 200);

    // The project's own limit holds: 3 per minute, beside the tenant's.
    let statuses: Vec<u16> = futures_sequence(&gw, &radiology, 4).await;
    assert_eq!(statuses[..3], [200, 200, 200], "{statuses:?}");
    let body = json!({"model": "bench", "prompt": "x", "max_tokens": 1});
    let (status, refused) = call(&gw, "POST", "/v1/completions", &radiology, Some(body)).await;
    assert_eq!(status, 429, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("acme/radiology"),
        "{refused}"
    );
    // The project's model list holds: `other` is not among them.
    let body = json!({"model": "other", "prompt": "x", "max_tokens": 1});
    let (status, _) = call(&gw, "POST", "/v1/completions", &radiology, Some(body)).await;
    assert_eq!(status, 404);
    // Usage records carry the project.
    let (status, usage) = call(
        &gw,
        "GET",
        "/admin/usage?tenant=acme&group_by=project",
        op,
        None,
    )
    .await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["data"][0]["project"], "radiology", "{usage}");
    assert_eq!(usage["data"][0]["requests"], 3, "{usage}");

    // A tenant-admin of acme.
    let (_, acme_admin) = issue(&gw, op, "acme", json!({"role": "tenant_admin"})).await;
    writes += 1;
    let (status, tenants) = call(&gw, "GET", "/admin/tenants", &acme_admin, None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = tenants["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme"], "a tenant-admin lists its own tenant only");
    // Every admin route, tried on the other tenant (or on what only operators reach): refused,
    // and nothing of beta's in the answer.
    let beta_key_path = format!("/admin/keys/{beta_id}");
    let beta_rotate_path = format!("/admin/keys/{beta_id}/rotate");
    let attempts: Vec<(&str, &str, Option<Value>)> = vec![
        ("GET", "/admin/tenants/beta", None),
        ("PATCH", "/admin/tenants/beta", Some(json!({"weight": 5}))),
        ("DELETE", "/admin/tenants/beta", None),
        ("POST", "/admin/tenants", Some(json!({"id": "gamma"}))),
        (
            "PATCH",
            "/admin/tenants/acme",
            Some(json!({"limits": {"max_concurrent": 80}})),
        ),
        ("GET", "/admin/tenants/beta/projects", None),
        (
            "POST",
            "/admin/tenants/beta/projects",
            Some(json!({"id": "p"})),
        ),
        ("GET", "/admin/tenants/beta/projects/p", None),
        (
            "PATCH",
            "/admin/tenants/beta/projects/p",
            Some(json!({"name": "x"})),
        ),
        ("DELETE", "/admin/tenants/beta/projects/p", None),
        ("GET", "/admin/tenants/beta/keys", None),
        ("POST", "/admin/tenants/beta/keys", Some(json!({}))),
        ("GET", &beta_key_path, None),
        ("DELETE", &beta_key_path, None),
        ("POST", &beta_rotate_path, Some(json!({"overlap_secs": 0}))),
        ("GET", "/admin/keys", None),
        ("POST", "/admin/keys", Some(json!({"role": "operator"}))),
        ("GET", "/admin/usage?tenant=beta", None),
        ("GET", "/admin/usage/records?tenant=beta", None),
        ("GET", "/admin/audit?tenant=beta", None),
        ("GET", "/admin/pools", None),
        ("GET", "/load", None),
    ];
    for (method, path, body) in attempts {
        let (status, answer) = call(&gw, method, path, &acme_admin, body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert!(
            !answer.to_string().contains("Beta Law"),
            "{method} {path}: {answer}"
        );
    }
    assert_eq!(complete(&gw, &beta).await, 200, "beta untouched");
    // Within its tenant: projects and keys, never above the operator's limits.
    let (status, answer) = call(
        &gw,
        "POST",
        "/admin/tenants/acme/projects",
        &acme_admin,
        Some(json!({"id": "cardiology", "limits": {"max_concurrent": 9}})),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = call(
        &gw,
        "POST",
        "/admin/tenants/acme/projects",
        &acme_admin,
        Some(json!({"id": "cardiology", "limits": {"max_concurrent": 2}})),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    writes += 1;
    let (cardio_id, cardio) = issue(
        &gw,
        &acme_admin,
        "acme",
        json!({"project": "cardiology", "name": "ward"}),
    )
    .await;
    writes += 1;
    assert_eq!(complete(&gw, &cardio).await, 200);
    let (status, usage) = call(&gw, "GET", "/admin/usage", &acme_admin, None).await;
    assert_eq!(status, 200);
    assert!(
        usage["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenant"] == "acme"),
        "{usage}"
    );

    // An auditor reads everything and writes nothing.
    let (status, auditor) = call(
        &gw,
        "POST",
        "/admin/keys",
        op,
        Some(json!({"role": "auditor"})),
    )
    .await;
    assert_eq!(status, 201, "{auditor}");
    writes += 1;
    let auditor = auditor["key"].as_str().unwrap().to_string();
    assert_eq!(
        call(&gw, "GET", "/admin/tenants/beta/keys", &auditor, None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&gw, "GET", "/admin/audit", &auditor, None).await.0,
        200
    );
    let (status, _) = call(
        &gw,
        "POST",
        "/admin/tenants",
        &auditor,
        Some(json!({"id": "x"})),
    )
    .await;
    assert_eq!(status, 403);
    // A tenant's key is no admin key, and no admin key calls the model API.
    assert_eq!(call(&gw, "GET", "/admin/tenants", &beta, None).await.0, 403);
    assert_eq!(complete(&gw, &acme_admin).await, 401);

    // Rotation: both valid for the overlap; revocation stops the old one at once.
    let (status, rotated) = call(
        &gw,
        "POST",
        &format!("/admin/keys/{cardio_id}/rotate"),
        &acme_admin,
        Some(json!({"overlap_secs": 600})),
    )
    .await;
    assert_eq!(status, 201, "{rotated}");
    writes += 1;
    let new_cardio = rotated["key"].as_str().unwrap().to_string();
    assert_eq!(rotated["project"], "cardiology");
    assert_eq!(complete(&gw, &cardio).await, 200);
    assert_eq!(complete(&gw, &new_cardio).await, 200);
    let (status, revoked) = call(
        &gw,
        "DELETE",
        &format!("/admin/keys/{cardio_id}"),
        &acme_admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    writes += 1;
    assert!(revoked["revoked_at_ms"].is_i64());
    assert_eq!(complete(&gw, &cardio).await, 401);
    assert_eq!(complete(&gw, &new_cardio).await, 200);
    // Last use: written by the replica every second here (`last_used_flush_secs`).
    let used_at = control_plane::now_ms();
    let (gw_ref, new_id) = (&gw, rotated["id"].as_str().unwrap().to_string());
    let new_path = format!("/admin/keys/{new_id}");
    let path_ref = new_path.as_str();
    let seen = within(Duration::from_secs(10), || async move {
        let (_, shown) = call(gw_ref, "GET", path_ref, op, None).await;
        shown["last_used_at_ms"]
            .as_i64()
            .is_some_and(|at| at >= used_at - 5_000)
    })
    .await;
    assert!(seen.is_some(), "the key's last use never showed");

    // Expiry.
    let (_, brief) = issue(&gw, op, "acme", json!({"expires_in_secs": 1})).await;
    writes += 1;
    assert_eq!(complete(&gw, &brief).await, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(complete(&gw, &brief).await, 401);

    // Deleting a project stops its keys and keeps its rows.
    let (status, _) = call(
        &gw,
        "DELETE",
        "/admin/tenants/acme/projects/radiology",
        op,
        None,
    )
    .await;
    assert_eq!(status, 200);
    writes += 1;
    assert_eq!(complete(&gw, &radiology).await, 401);
    let (_, projects) = call(&gw, "GET", "/admin/tenants/acme/projects", op, None).await;
    assert!(projects["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == "radiology" && p["disabled"] == true));
    let (_, key) = call(&gw, "GET", &format!("/admin/keys/{radiology_id}"), op, None).await;
    assert_eq!(key["project"], "radiology");
    // Deleting a tenant stops its keys.
    assert_eq!(
        call(&gw, "DELETE", "/admin/tenants/beta", op, None).await.0,
        200
    );
    writes += 1;
    assert_eq!(complete(&gw, &beta).await, 401);

    // Bad input: clear 400s in OpenAI's shape, nothing written.
    for (path, body, param) in [
        ("/admin/tenants", json!({"id": "a b"}), "id"),
        (
            "/admin/tenants",
            json!({"id": "ok", "limits": {"max_concurrent": "many"}}),
            "limits.max_concurrent",
        ),
        (
            "/admin/tenants",
            json!({"id": "ok", "colour": "red"}),
            "colour",
        ),
        (
            "/admin/tenants/acme/keys",
            json!({"expires_in_secs": 0}),
            "expires_in_secs",
        ),
    ] {
        let (status, error) = call(&gw, "POST", path, op, Some(body)).await;
        assert_eq!(status, 400, "{path}: {error}");
        assert_eq!(error["error"]["param"], param, "{error}");
    }
    let response = gw
        .client()
        .post(gw.url("/admin/tenants"))
        .bearer_auth(op)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        call(
            &gw,
            "POST",
            "/admin/tenants",
            op,
            Some(json!({"id": "acme"}))
        )
        .await
        .0,
        409
    );
    assert_eq!(
        call(&gw, "GET", "/admin/tenants/nobody", op, None).await.0,
        404
    );

    // The audit log: one entry per write, with who, what, before and after.
    let (status, audit) = call(&gw, "GET", "/admin/audit", op, None).await;
    assert_eq!(status, 200);
    let entries = audit["data"].as_array().unwrap();
    assert_eq!(entries.len(), writes, "{audit}");
    let revoke = entries
        .iter()
        .find(|e| e["action"] == "key.revoke")
        .unwrap();
    assert_eq!(revoke["actor_role"], "tenant_admin");
    assert_eq!(revoke["address"], "127.0.0.1");
    assert!(revoke["before"]["revoked_at_ms"].is_null());
    assert!(revoke["after"]["revoked_at_ms"].is_i64());
    assert!(
        !audit.to_string().contains("sha256:"),
        "no digest in the audit log"
    );
    let (_, own) = call(&gw, "GET", "/admin/audit", &acme_admin, None).await;
    let own = own["data"].as_array().unwrap();
    assert!(
        !own.is_empty() && own.iter().all(|e| e["tenant"] == "acme"),
        "{own:?}"
    );
    let response = gw
        .client()
        .get(gw.url("/admin/audit?format=csv"))
        .bearer_auth(op)
        .send()
        .await
        .unwrap();
    let csv = response.text().await.unwrap();
    assert_eq!(csv.lines().count(), writes + 1, "{csv}");

    // `gateway admin`: the same API without curl.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("admin")
            .args(["--url", &gw.url(""), "--key", op])
            .args(args)
            .output()
            .unwrap()
    };
    let created = cli(&["tenants", "create", "from-cli", "--rpm", "100"]);
    assert!(created.status.success(), "{created:?}");
    let issued = cli(&["keys", "issue", "from-cli", "--name", "cli"]);
    assert!(issued.status.success(), "{issued:?}");
    let issued: Value = serde_json::from_slice(&issued.stdout).unwrap();
    assert_eq!(complete(&gw, issued["key"].as_str().unwrap()).await, 200);
    let refused = cli(&["tenants", "create", "from-cli"]);
    assert!(!refused.status.success(), "a 409 exits non-zero");

    // Restarted with a file that names other tenants: the store stays the source, and the
    // start says the file's tenants are ignored.
    drop(gw);
    let changed = config.replace("id = \"seeded\"", "id = \"newcomer\"");
    let gw = TestGateway::start(Options {
        config: Some(&changed),
        data_dir: Some(data.path().to_path_buf()),
        capture_stderr: true,
        env: vec![("RUST_LOG", "warn".into())],
        ..Options::default()
    });
    assert_eq!(
        complete(&gw, &new_cardio).await,
        200,
        "the store outlives the process"
    );
    assert_eq!(
        complete(&gw, "sk-seeded-tenant").await,
        200,
        "the seeded tenant lives in the store"
    );
    let (status, _) = call(&gw, "GET", "/admin/tenants/newcomer", op, None).await;
    assert_eq!(
        status, 404,
        "the file's tenants no longer seed a store that has tenants"
    );
    let logs = gw.stderr.lock().unwrap().join("\n");
    assert!(logs.contains("are ignored"), "{logs}");
}

/// `n` completions with `key`, one after the other: their statuses.
async fn futures_sequence(gateway: &TestGateway, key: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        statuses.push(complete(gateway, key).await);
    }
    statuses
}

fn fleet_config(store_url: &str, redis_url: &str) -> String {
    format!(
        "admin_keys = [\"{admin}\"]\n\
         [control_plane]\nenabled = true\nurl = \"{store_url}\"\npoll_interval_ms = 500\n\
         [quotas]\nredis_url = \"{redis_url}\"\nnamespace = \"cp\"\nlease_secs = 2\n\
         [[models]]\nid = \"bench\"\nkind = \"synthetic\"\n\
         [models.synthetic]\ntokens_per_second = 2000\n",
        admin = digest(OPERATOR),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_on_one_postgres_see_every_change_within_two_seconds() {
    let mut postgres = PostgresServer::start();
    let store_url = postgres.database("control");
    let redis = RedisServer::start();
    let config = fleet_config(&store_url, &redis.url());
    let a = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let b = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let op = OPERATOR;
    let (status, _) = call(&a, "POST", "/admin/tenants", op, Some(json!({"id": "lab"}))).await;
    assert_eq!(status, 201);
    let (status, _) = call(
        &a,
        "POST",
        "/admin/tenants/lab/projects",
        op,
        Some(json!({"id": "genomics", "limits": {"requests_per_minute": 6}})),
    )
    .await;
    assert_eq!(status, 201);

    // Issued on A: works on B within 2 s.
    let (key_id, key) = issue(&a, op, "lab", json!({"project": "genomics"})).await;
    let (a_ref, b_ref, key_ref) = (&a, &b, key.as_str());
    let took = within(Duration::from_secs(2), || async move {
        complete(b_ref, key_ref).await == 200
    })
    .await;
    assert!(
        took.is_some(),
        "a key issued on A did not work on B within 2 s"
    );

    // The project's limit holds over both replicas (counted in Redis), not per replica. One
    // request was spent above; at most one more cell refills while these run.
    let mut admitted = 1;
    for i in 0..12 {
        let replica = if i % 2 == 0 { &a } else { &b };
        if complete(replica, &key).await == 200 {
            admitted += 1;
        }
    }
    assert!(
        (6..=7).contains(&admitted),
        "admitted {admitted} of a 6-per-minute project"
    );

    // Revoked on B: refused on A within 2 s.
    let (_, other) = issue(&b, op, "lab", json!({})).await;
    assert_eq!(
        call(&b, "DELETE", &format!("/admin/keys/{key_id}"), op, None)
            .await
            .0,
        200
    );
    let took = within(Duration::from_secs(2), || async move {
        complete(a_ref, key_ref).await == 401
    })
    .await;
    assert!(
        took.is_some(),
        "a key revoked on B still worked on A after 2 s"
    );

    // The store stopped: serving goes on with the last known keys; writes fail with 503 and
    // nothing is lost silently.
    postgres.stop();
    for replica in [&a, &b] {
        assert_eq!(complete(replica, &other).await, 200);
        assert_eq!(complete(replica, &key).await, 401, "still revoked");
    }
    let (status, error) = call(
        &a,
        "POST",
        "/admin/tenants",
        op,
        Some(json!({"id": "late"})),
    )
    .await;
    assert_eq!(status, 503, "{error}");
    assert_eq!(error["error"]["code"], "store_unavailable");
    let (status, _) = call(&b, "DELETE", "/admin/keys/key_whatever", op, None).await;
    assert_eq!(
        status, 503,
        "a revocation while the store is down is refused, never lost"
    );
    // Reads keep answering from the cache.
    assert_eq!(
        call(&a, "GET", "/admin/tenants/lab/keys", op, None).await.0,
        200
    );

    // Back: writes resume, and the other replica follows.
    postgres.resume();
    let resumed = within(Duration::from_secs(30), || async move {
        call(
            a_ref,
            "POST",
            "/admin/tenants",
            op,
            Some(json!({"id": "late"})),
        )
        .await
        .0 == 201
    })
    .await;
    assert!(
        resumed.is_some(),
        "writes did not resume once the store was back"
    );
    let (_, late_key) = issue(&a, op, "late", json!({})).await;
    let late_ref = late_key.as_str();
    let took = within(Duration::from_secs(5), || async move {
        complete(b_ref, late_ref).await == 200
    })
    .await;
    assert!(
        took.is_some(),
        "B did not follow the store once it was back"
    );

    // One audit entry per write, over both replicas.
    let (_, audit) = call(&b, "GET", "/admin/audit", op, None).await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "project.create",
            "key.issue",
            "key.issue",
            "key.revoke",
            "tenant.create",
            "key.issue"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_store_the_file_rules_and_the_admin_api_has_its_own_rate_limit() {
    let config = format!(
        "admin_keys = [\"{admin}\"]\n\
         [server]\nadmin_requests_per_minute = 5\n\
         [[models]]\nid = \"bench\"\nkind = \"synthetic\"\n\
         [models.synthetic]\ntokens_per_second = 2000\n\
         [[tenants]]\nid = \"file\"\nkeys = [\"{file}\"]\n",
        admin = digest(OPERATOR),
        file = digest("sk-file-tenant"),
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let response = gw
        .client()
        .get(gw.url("/admin/tenants"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-gateway-tenant-source"]
            .to_str()
            .unwrap(),
        "file"
    );
    let (status, error) = call(
        &gw,
        "POST",
        "/admin/tenants",
        OPERATOR,
        Some(json!({"id": "x"})),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["code"], "control_plane_disabled");
    // Five admin requests a minute: two spent above, three more pass, the next is refused; the
    // model API is not counted.
    for _ in 0..3 {
        assert_eq!(
            call(&gw, "GET", "/admin/tenants", OPERATOR, None).await.0,
            200
        );
    }
    let (status, error) = call(&gw, "GET", "/admin/tenants", OPERATOR, None).await;
    assert_eq!(status, 429, "{error}");
    assert_eq!(error["error"]["code"], "admin_rate_limit_exceeded");
    assert_eq!(complete(&gw, "sk-file-tenant").await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_record_is_billed_at_the_price_in_force_when_it_was_admitted() {
    let config = format!(
        "admin_keys = [\"{admin}\"]\n\
         [control_plane]\nenabled = true\ncurrency = \"EUR\"\n\
         [[models]]\nid = \"bench\"\nkind = \"synthetic\"\n\
         [models.synthetic]\ntokens_per_second = 2000\n\
         [[tenants]]\nid = \"lab\"\nkeys = [\"{lab}\"]\n\
         [[tenants]]\nid = \"bulk\"\nkeys = [\"{bulk}\"]\npriority = \"batch\"\n",
        admin = digest(OPERATOR),
        lab = digest("sk-lab-priced"),
        bulk = digest("sk-bulk-priced"),
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let op = OPERATOR;
    let price = |body: Value| call(&gw, "POST", "/admin/prices", op, Some(body));
    let (status, v1) = price(json!({"model": "bench", "input_per_mtok": 1500,
        "cached_input_per_mtok": 300, "output_per_mtok": 6000}))
    .await;
    assert_eq!(status, 201, "{v1}");
    assert_eq!(v1["currency"], "EUR");
    for (body, param) in [
        (
            json!({"model": "bench", "input_per_mtok": 1, "output_per_mtok": 1, "currency": "USD"}),
            "currency",
        ),
        (
            json!({"model": "bench", "input_per_mtok": 1, "output_per_mtok": 1, "effective_from_ms": 1000}),
            "effective_from_ms",
        ),
        (
            json!({"model": "bench", "input_per_mtok": -1, "output_per_mtok": 1}),
            "input_per_mtok",
        ),
    ] {
        let (status, error) = price(body).await;
        assert_eq!(status, 400, "{error}");
        assert_eq!(error["error"]["param"], param, "{error}");
    }

    assert_eq!(complete(&gw, "sk-lab-priced").await, 200);
    // A new price from 1.5 s on: a request admitted before it is billed at the old one.
    let from = control_plane::now_ms() + 1500;
    let (status, v2) = price(json!({"model": "bench", "input_per_mtok": 2000,
        "output_per_mtok": 9000, "batch_discount_percent": 50, "effective_from_ms": from}))
    .await;
    assert_eq!(status, 201, "{v2}");
    assert_eq!(complete(&gw, "sk-lab-priced").await, 200);
    tokio::time::sleep(Duration::from_millis(
        (from - control_plane::now_ms()).max(0) as u64 + 200,
    ))
    .await;
    assert_eq!(complete(&gw, "sk-lab-priced").await, 200);
    assert_eq!(complete(&gw, "sk-bulk-priced").await, 200);

    let (_, records) = call(&gw, "GET", "/admin/usage/records", op, None).await;
    let records = records["data"].as_array().unwrap().clone();
    assert_eq!(records.len(), 4, "{records:?}");
    let versions: Vec<&str> = records
        .iter()
        .map(|r| r["price_version"].as_str().unwrap())
        .collect();
    let (v1, v2) = (
        v1["version"].as_str().unwrap(),
        v2["version"].as_str().unwrap(),
    );
    assert_eq!(versions, [v1, v1, v2, v2]);
    let n = |r: &Value, field: &str| r[field].as_i64().unwrap();
    let mut total = 0;
    for (i, r) in records.iter().enumerate() {
        let (prompt, cached, completion) = (
            n(r, "prompt_tokens"),
            n(r, "cached_tokens"),
            n(r, "completion_tokens"),
        );
        assert!(prompt > 0 && completion > 0, "{r}");
        let expected = match i {
            0 | 1 => (prompt - cached) * 1500 + cached * 300 + completion * 6000,
            2 => prompt * 2000 + completion * 9000,
            _ => (prompt * 2000 + completion * 9000) * 50 / 100,
        };
        assert_eq!(n(r, "cost_micros"), expected, "record {i}: {r}");
        total += expected;
    }
    // The sums, exact and in minor units, per tenant and model.
    let (_, usage) = call(&gw, "GET", "/admin/usage?group_by=model", op, None).await;
    assert_eq!(usage["currency"], "EUR");
    let summed: i64 = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| n(row, "cost_micros"))
        .sum();
    assert_eq!(summed, total, "{usage}");
    let lab = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tenant"] == "lab")
        .unwrap();
    assert_eq!(
        n(lab, "cost"),
        (n(lab, "cost_micros") + 500_000) / 1_000_000
    );
    let csv = gw
        .client()
        .get(gw.url("/admin/usage?format=csv"))
        .bearer_auth(op)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.lines().next().unwrap().contains("cost_micros"), "{csv}");
    let (status, prices) = call(&gw, "GET", "/admin/prices?model=bench", op, None).await;
    assert_eq!(status, 200);
    assert_eq!(prices["data"].as_array().unwrap().len(), 2);
}

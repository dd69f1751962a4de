//! HTTPS through rustls, the `keys` commands, and fetching the default model when missing.

mod common;

use std::process::Command;

use common::{Options, TestGateway, DEMO_KEY, MODEL};

#[tokio::test]
async fn serves_https_when_the_config_names_a_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let config = format!(
        r#"
        [tls]
        cert = "{}"
        key = "{}"
        [[models]]
        id = "{MODEL}"
        [[tenants]]
        id = "demo"
        keys = ["{}"]
        "#,
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display(),
        common::digest(DEMO_KEY),
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    assert!(gw.base.starts_with("https://127.0.0.1:"), "{}", gw.base);
    let port = gw.base.rsplit(':').next().unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    let resp = client
        .get(format!("https://localhost:{port}/v1/models"))
        .bearer_auth(DEMO_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["data"][0]["id"], MODEL);
    // Under TLS the console's cookies are `Secure` (a browser never sends them in the clear).
    let form = client
        .get(format!("https://localhost:{port}/console/sign-in"))
        .send()
        .await
        .unwrap();
    let cookie = form.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.ends_with("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // A client that does not trust the certificate is refused.
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .is_err());
}

fn gateway(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn keys_new_prints_a_key_and_its_stored_form() {
    let out = gateway(&["keys", "new", "--tenant", "acme"]);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no `{name}` in {out}"))
    };
    let key = field("key:");
    let stored = field("stored:");
    assert!(key.starts_with("sk-") && key.len() == 67, "{key}");
    assert_eq!(stored, common::digest(&key));
    assert!(out.contains("id = \"acme\""));
    assert_eq!(gateway(&["keys", "hash", &key]).trim(), stored);
    // A second key is different.
    assert!(!gateway(&["keys", "new", "--tenant", "acme"]).contains(&key));
}

#[test]
fn keys_hash_matches_sha256_and_reads_stdin() {
    let out = gateway(&["keys", "hash", "test"]);
    assert_eq!(
        out.trim(),
        "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["keys", "hash", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"test\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["keys", "new", "--tenant", "no spaces"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[tokio::test]
async fn listens_on_a_host_name_and_logs_without_colours_into_a_pipe() {
    let gw = TestGateway::start(Options {
        listen: Some("localhost:0".into()),
        capture_stderr: true,
        env: vec![("RUST_LOG", "info".into())],
        ..Options::default()
    });
    assert!(gw.base.starts_with("http://127.0.0.1:"), "{}", gw.base);
    assert_eq!(gw.get("/v1/models", Some(DEMO_KEY)).await.0, 200);
    let logs = gw.stderr.lock().unwrap().join("\n");
    assert!(logs.contains("INFO"), "info logs were captured: {logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI escape codes in piped logs: {logs}"
    );
}

#[tokio::test]
async fn demo_mode_generates_a_key_when_none_is_given() {
    let gw = TestGateway::start(Options {
        env: vec![("GATEWAY_DEMO_KEY", String::new())],
        ..Options::default()
    });
    let line = gw
        .stdout
        .iter()
        .find(|l| l.contains("API key"))
        .expect("key printed once");
    let key = line
        .split_whitespace()
        .find(|w| w.starts_with("sk-"))
        .unwrap();
    assert_eq!(gw.get("/v1/models", Some(key)).await.0, 200);
    assert_eq!(gw.get("/v1/models", Some(DEMO_KEY)).await.0, 401);
}

#[tokio::test]
async fn fetches_the_default_model_into_an_empty_cache() {
    let cache = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(Options {
        model_flag: false,
        env: vec![("GATEWAY_CACHE_DIR", cache.path().display().to_string())],
        ..Options::default()
    });
    let fetched = cache.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(fetched.is_file());
    assert_eq!(
        model_fetch::sha256_file(&fetched).unwrap(),
        model_fetch::DEFAULT_MODEL.sha256
    );
    // The embedding model beside it, every file checked.
    let embedding = cache.path().join(model_fetch::EMBEDDING_MODEL.dir_name);
    for (_, name, sha256) in model_fetch::EMBEDDING_MODEL.files {
        assert_eq!(
            model_fetch::sha256_file(&embedding.join(name)).unwrap(),
            *sha256
        );
    }
    // Nothing half-written is left behind.
    let mut entries: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["SmolLM2-135M-Instruct.Q4_1.gguf", "all-MiniLM-L6-v2"]
    );
    let (status, _) = gw
        .post(
            "/v1/completions",
            serde_json::json!({"model": MODEL, "prompt": "Hi", "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200);
}

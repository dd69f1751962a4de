//! Starts the real `gateway` binary on an ephemeral loopback port with the real model.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use model_fetch::{default_cache_dir, ensure_model, DEFAULT_MODEL};

pub mod lora;

pub const MODEL: &str = "smollm2-135m-instruct";
pub const DEMO_KEY: &str = "sk-test-demo-key";

/// The default model, fetched once into the shared cache.
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| ensure_model(&DEFAULT_MODEL, &default_cache_dir()).expect("model fetch"))
        .clone()
}

pub struct TestGateway {
    child: Child,
    pub base: String,
    pub key: String,
    /// Lines the gateway printed before it listened.
    pub stdout: Vec<String>,
    /// The config file it runs with, if any (tests edit it to exercise hot reload).
    pub config_path: Option<PathBuf>,
    /// Log lines, when `capture_stderr` was set.
    pub stderr: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

pub struct Options<'a> {
    /// Config file contents; `None` runs the embedded default with the demo tenant.
    pub config: Option<&'a str>,
    /// Pass `--model` with the cached model (else the gateway finds or fetches it itself).
    pub model_flag: bool,
    pub env: Vec<(&'a str, String)>,
    /// Wait for `/ready`.
    pub wait_ready: bool,
    /// Where the usage ledger lives (`GATEWAY_DATA_DIR`); `None`: a fresh temporary folder.
    pub data_dir: Option<PathBuf>,
    /// Keep stderr (logs) in `TestGateway::stderr` instead of passing it through.
    pub capture_stderr: bool,
    /// Run the `engine-worker` binary (with [`WORKER_SECRET`]) instead of the gateway.
    pub worker: bool,
    /// Listen address; default an ephemeral loopback port.
    pub listen: Option<String>,
}

/// The shared secret of test workers (gateways read it from `WORKER_SECRET`).
pub const WORKER_SECRET: &str = "test-worker-secret-0123456789";

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            config: None,
            model_flag: true,
            env: Vec::new(),
            wait_ready: true,
            data_dir: None,
            capture_stderr: false,
            worker: false,
            listen: None,
        }
    }
}

/// Generous bound so a broken start fails instead of hanging; not a performance assertion.
const START_BOUND: Duration = Duration::from_secs(300);

impl TestGateway {
    /// The embedded default with the demo key.
    pub fn start_demo() -> Self {
        Self::start(Options::default())
    }

    pub fn start(options: Options<'_>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listen = options.listen.as_deref().unwrap_or("127.0.0.1:0");
        let (mut cmd, announcement) = match options.worker {
            true => {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_engine-worker"));
                cmd.args(["--listen", listen])
                    .env("ENGINE_WORKER_SECRET", WORKER_SECRET);
                (cmd, "engine-worker listening on ")
            }
            false => {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
                cmd.args(["serve", "--listen", listen])
                    .env("WORKER_SECRET", WORKER_SECRET);
                (cmd, "gateway listening on ")
            }
        };
        cmd.env("GATEWAY_DEMO_KEY", DEMO_KEY)
            .env("RUST_LOG", "warn")
            .env_remove("GATEWAY_CONFIG")
            .env(
                "GATEWAY_DATA_DIR",
                options
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| dir.path().join("data")),
            )
            .stdout(Stdio::piped())
            .stderr(if options.capture_stderr {
                Stdio::piped()
            } else {
                Stdio::inherit()
            });
        let mut config_path = None;
        if let Some(config) = options.config {
            let path = dir.path().join("gateway.toml");
            std::fs::write(&path, config).unwrap();
            cmd.arg("--config").arg(&path);
            config_path = Some(path);
        }
        if options.model_flag {
            cmd.arg("--model").arg(model_path());
        }
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn gateway");
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut stdout = Vec::new();
        let base = loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).unwrap();
            assert!(n > 0, "gateway exited before listening; stdout: {stdout:?}");
            let line = line.trim_end().to_string();
            if let Some(url) = line.strip_prefix(announcement) {
                break url.to_string();
            }
            stdout.push(line);
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            let lines = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let gateway = Self {
            child,
            base,
            key: match options.worker {
                true => WORKER_SECRET.to_string(),
                false => DEMO_KEY.to_string(),
            },
            stdout,
            config_path,
            stderr,
            _dir: dir,
        };
        if options.wait_ready {
            gateway.wait_ready();
        }
        gateway
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no graceful shutdown, no flush (crash-safety tests).
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Polls `/ready` until 200. Runs on its own thread: it is called from async tests, where a
    /// blocking client may not run.
    pub fn wait_ready(&self) {
        let url = self.url("/ready");
        std::thread::spawn(move || {
            // Readiness only: the TLS test checks certificates properly with its own client.
            let client = reqwest::blocking::Client::builder()
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap();
            let started = Instant::now();
            loop {
                if let Ok(r) = client.get(&url).send() {
                    if r.status() == 200 {
                        return;
                    }
                }
                assert!(
                    started.elapsed() < START_BOUND,
                    "gateway never became ready"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .join()
        .expect("readiness poll");
    }

    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// POST JSON with the demo key; returns status and parsed body.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.post_raw(path, body.to_string(), Some(&self.key)).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: String,
        key: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.client().post(self.url(path)).body(body);
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, body)
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> (u16, serde_json::Value) {
        let mut req = self.client().get(self.url(path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// One tenant's entry of `/admin/tenants` (its limits and live usage), read with
    /// `admin_key`.
    pub async fn admin_tenant(&self, admin_key: &str, id: &str) -> serde_json::Value {
        let (status, tenants) = self.get("/admin/tenants", Some(admin_key)).await;
        assert_eq!(status, 200, "{tenants}");
        let found = tenants["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id);
        found
            .unwrap_or_else(|| panic!("no tenant `{id}` in {tenants}"))
            .clone()
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let response = self.client().get(self.url("/metrics")).send().await;
        response.unwrap().text().await.unwrap()
    }

    /// A counter's value from `/metrics` (summed over labels).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Streams a request and returns the parsed `data:` payloads (the final `[DONE]` as a string).
    pub async fn stream(&self, path: &str, body: serde_json::Value) -> Vec<serde_json::Value> {
        let resp = self
            .client()
            .post(self.url(path))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let bytes = resp.bytes().await.unwrap();
        let text = std::str::from_utf8(&bytes).expect("the SSE body is valid UTF-8");
        text.split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let data = e
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data event: {e:?}"));
                if data == "[DONE]" {
                    serde_json::Value::String(data.into())
                } else {
                    serde_json::from_str(data).unwrap()
                }
            })
            .collect()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stored form of a key, as `gateway keys hash` prints it.
pub fn digest(key: &str) -> String {
    policies::ApiKey::from_plaintext(key).digest().to_string()
}

/// The clients the SDK tests drive, pinned: OpenAI's and Anthropic's official SDKs, and
/// LangChain's Anthropic chat model.
const SDK_PACKAGES: [&str; 3] = [
    "openai==3.63.0",
    "anthropic==2.17.0",
    "langchain-anthropic==1.7.10",
];

/// A virtual environment with the official SDKs ([`SDK_PACKAGES`]), made once under
/// `target/`.
pub fn openai_sdk_python() -> std::path::PathBuf {
    // Made once per test binary (its tests run in parallel threads; the binaries one by one).
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(make_sdk_venv).clone()
}

fn make_sdk_venv() -> PathBuf {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sdk-venv");
    let python = venv.join("bin/python");
    let check = "import openai, anthropic, langchain_anthropic; \
                 assert openai.__version__ == '3.63.0' and anthropic.__version__ == '2.17.0'";
    let has_sdk = |python: &std::path::Path| {
        std::process::Command::new(python)
            .args(["-c", check])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_sdk(&python) {
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(made.success(), "python3 -m venv failed");
        let installed = std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(SDK_PACKAGES)
            .status()
            .expect("pip install");
        assert!(installed.success(), "pip install {SDK_PACKAGES:?} failed");
    }
    assert!(has_sdk(&python), "the SDKs are not importable");
    python
}

/// Runs `gateway/tests/sdk/<script>` with the official SDK against `base` with `key` and
/// `model`; returns the JSON line it prints of what it saw.
pub async fn run_sdk_script(script: &str, base: &str, key: &str, model: &str) -> serde_json::Value {
    let python = openai_sdk_python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let args = [base.to_string(), key.to_string(), model.to_string()];
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(args)
            .output()
            .expect("run the SDK script")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// One call with `key`: `(status, body)`; a body that is not JSON comes back as a string.
pub async fn call(
    gateway: &TestGateway,
    method: &str,
    path: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = gateway
        .client()
        .request(method, gateway.url(path))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// POSTs a multipart form to `path` with `key`: the text `fields`, and `file` as the part
/// `file` named `file_name`. `(status, body)`.
pub async fn upload(
    gateway: &TestGateway,
    path: &str,
    key: &str,
    fields: &[(&str, &str)],
    file: Vec<u8>,
    file_name: &str,
) -> (u16, serde_json::Value) {
    let mut form = reqwest::multipart::Form::new();
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    let part = reqwest::multipart::Part::bytes(file).file_name(file_name.to_string());
    let response = gateway
        .client()
        .post(gateway.url(path))
        .bearer_auth(key)
        .multipart(form.part("file", part))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

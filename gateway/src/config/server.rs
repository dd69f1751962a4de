//! `listen`, `[server]`, `[engine]` and `[tls]`: where and how the gateway serves.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Limits of the HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Largest accepted request body in bytes (413 beyond).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Time allowed until a response starts (the whole response when not streaming); 504 beyond.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Browser origins allowed to call the API (CORS), e.g. `["https://chat.example.org"]`;
    /// `["*"]` allows any origin. Empty (the default): no CORS headers, browsers on other
    /// origins are refused by their own same-origin policy.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Most prompts one `/v1/completions` request may carry (each is a sequence in the engine);
    /// 400 beyond.
    #[serde(default = "default_max_prompts_per_request")]
    pub max_prompts_per_request: usize,
    /// Most prompt tokens one request may carry over all its prompts; 400 beyond.
    #[serde(default = "default_max_prompt_tokens_per_request")]
    pub max_prompt_tokens_per_request: u64,
    /// Seconds a connection may take to send a request head, counted from its opening or from
    /// the previous response (idle keep-alive); then it is closed.
    #[serde(default = "default_header_read_timeout_secs")]
    pub header_read_timeout_secs: u64,
    /// Most connections open at once; one more is closed at once (counted in
    /// `gateway_connections_refused_total`). Absent: the process's open-file limit less 128
    /// (kept for the ledger, model files, upstream connections), so that idle sockets can never
    /// take every descriptor.
    pub max_connections: Option<usize>,
    /// Threads of the async runtime that serves HTTP and relays streams. Absent: one per core
    /// (or `TOKIO_WORKER_THREADS`). Fewer than the cores suits a gateway that shares its
    /// machine (a load generator, local engines' model threads): every extra worker that parks
    /// and wakes costs system calls per request.
    pub worker_threads: Option<std::num::NonZeroUsize>,
    /// Requests per minute one admin key may make to `/admin/*` (429 beyond; `/load`, polled
    /// by gateways, is not counted). 0: unlimited.
    #[serde(default = "default_admin_requests_per_minute")]
    pub admin_requests_per_minute: u32,
}

fn default_admin_requests_per_minute() -> u32 {
    600
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body_bytes(),
            request_timeout_secs: default_request_timeout_secs(),
            cors_origins: Vec::new(),
            max_prompts_per_request: default_max_prompts_per_request(),
            max_prompt_tokens_per_request: default_max_prompt_tokens_per_request(),
            header_read_timeout_secs: default_header_read_timeout_secs(),
            max_connections: None,
            worker_threads: None,
            admin_requests_per_minute: default_admin_requests_per_minute(),
        }
    }
}

/// Process-wide engine settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Threads for the models' matrix work; absent: every core.
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
/// `[tls]`: serve HTTPS with these PEM files.
pub struct TlsConfig {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

pub(super) fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// `IP:PORT`, or `HOST:PORT` resolved by the system (`localhost:8080`); IPv4 first when a name
/// has both, as most clients try it first.
pub fn resolve_listen(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("listen address `{text}`: {e} (expected HOST:PORT or IP:PORT)"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("listen address `{text}` resolves to no address"))
}

pub(super) fn deserialize_listen<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    resolve_listen(&text).map_err(serde::de::Error::custom)
}

fn default_max_body_bytes() -> usize {
    2 * 1024 * 1024
}

fn default_max_prompts_per_request() -> usize {
    64
}

fn default_max_prompt_tokens_per_request() -> u64 {
    131_072
}

impl ServerConfig {
    /// `max_connections`, or the default derived from the open-file limit.
    pub fn connection_cap(&self) -> usize {
        if let Some(cap) = self.max_connections {
            return cap;
        }
        #[cfg(target_os = "linux")]
        if let Ok(limits) = procfs::process::Process::myself().and_then(|p| p.limits()) {
            if let procfs::process::LimitValue::Value(files) = limits.max_open_files.soft_limit {
                return (files as usize).saturating_sub(128).max(64);
            }
        }
        4096
    }
}

fn default_header_read_timeout_secs() -> u64 {
    30
}

fn default_request_timeout_secs() -> u64 {
    600
}

//! The gateway's configuration file (TOML), documented in `docs/configuration.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use engines::model::WeightFormat;
use engines::model_fetch::DEFAULT_MODEL_ID;
use engines::{CoreConfig, DeviceSpec};
use policies::{KeyDigest, KeyStore, ModelAllowList, TenantId, TenantLimits, TenantSpec};
use serde::Deserialize;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("tenant `{tenant}`: {source}")]
    Key {
        tenant: TenantId,
        source: policies::KeyError,
    },
    #[error(transparent)]
    Keys(#[from] policies::KeyError),
    #[error("{0}")]
    Invalid(String),
    #[error("model `{0}` is configured twice")]
    DuplicateModel(String),
    #[error("model `{model}`: device `{device}`: {reason}")]
    Device {
        model: String,
        device: String,
        reason: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address to listen on: `IP:PORT` or `HOST:PORT` (resolved once at start-up).
    #[serde(default = "default_listen", deserialize_with = "deserialize_listen")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    /// Serve HTTPS with these PEM files instead of plain HTTP.
    pub tls: Option<TlsConfig>,
    #[serde(default = "default_models")]
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Stored forms of the keys that may use `/admin/*`.
    #[serde(default)]
    pub admin_keys: Vec<String>,
    #[serde(default)]
    pub ledger: LedgerConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Named pools of replicas that models are routed to.
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
    #[serde(default)]
    pub routing: RoutingConfig,
}

/// `[[pools]]`: replicas that serve models, in this process (`local`) or elsewhere (`remote`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub kind: PoolKindConfig,
    /// `local`: one engine (and request core) per device, per model: `cpu`, `cuda:N`, `metal:N`.
    #[serde(default)]
    pub devices: Vec<String>,
    /// `remote`: base URLs of OpenAI-compatible servers (`http://host:port[/v1]`).
    #[serde(default)]
    pub urls: Vec<String>,
    /// `remote`: environment variable holding the upstreams' API key (an `engine-worker`'s
    /// shared secret), sent as a bearer token. Keys never go in this file.
    pub api_key_env: Option<String>,
    /// A replica with this many tokens (prompt + `max_tokens` not yet generated) outstanding
    /// counts as saturated: requests go to another replica or the next pool.
    pub max_outstanding_tokens: Option<u64>,
    /// `remote`: TCP connect timeout (default 2000 ms).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// `remote`: time until the upstream's response headers (default 30 s).
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// `remote`: longest silence between two chunks of a stream (default 60 s).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Consecutive failures (transport errors, failed health checks) that take a replica out.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// How long a replica stays out before it is tried again (default 5000 ms).
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
}

impl PoolConfig {
    /// The pool of a model that names none: one replica on its `device`.
    pub fn implicit_local(device: &str) -> Self {
        Self {
            name: "local".to_string(),
            kind: PoolKindConfig::Local,
            devices: vec![device.to_string()],
            urls: Vec::new(),
            api_key_env: None,
            max_outstanding_tokens: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            response_timeout_ms: default_response_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            failure_threshold: default_failure_threshold(),
            open_ms: default_open_ms(),
        }
    }

    pub fn breaker(&self) -> routing::BreakerSettings {
        routing::BreakerSettings {
            failure_threshold: self.failure_threshold.max(1),
            open_for: std::time::Duration::from_millis(self.open_ms),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PoolKindConfig {
    Local,
    Remote,
}

/// `[routing]`: health checks of remote replicas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Time between two health checks of each remote replica (default 2000 ms).
    #[serde(default = "default_health_interval_ms")]
    pub health_interval_ms: u64,
    /// Time a health check may take (default 1000 ms).
    #[serde(default = "default_health_timeout_ms")]
    pub health_timeout_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            health_interval_ms: default_health_interval_ms(),
            health_timeout_ms: default_health_timeout_ms(),
        }
    }
}

fn default_connect_timeout_ms() -> u64 {
    2000
}
fn default_response_timeout_ms() -> u64 {
    30_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_failure_threshold() -> u32 {
    2
}
fn default_open_ms() -> u64 {
    5000
}
fn default_health_interval_ms() -> u64 {
    2000
}
fn default_health_timeout_ms() -> u64 {
    1000
}

/// `[ledger]`: the durable usage ledger.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// `false`: no ledger (usage is then only in memory and in metrics; the daily budget resets
    /// on restart). Meant for benchmarks.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// SQLite file; absent: `usage.db` in the data directory (`GATEWAY_DATA_DIR`, else
    /// `$XDG_DATA_HOME/gateway` or `~/.local/share/gateway`).
    pub path: Option<PathBuf>,
    /// `power-loss` (default: every commit synced) or `process-crash` (no sync per commit).
    #[serde(default)]
    pub durability: ledger::Durability,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
            durability: ledger::Durability::default(),
        }
    }
}

impl LedgerConfig {
    /// Where the ledger lives.
    pub fn resolved_path(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| default_data_dir().join("usage.db"))
    }
}

/// The gateway's state directory (the ledger's default home).
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GATEWAY_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("gateway");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/gateway"),
        None => PathBuf::from("gateway-data"),
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    Grpc,
}

/// `[telemetry]`: traces, metrics and logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Export traces over OTLP to this endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` also turns it on).
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (default) or `grpc` (`OTEL_EXPORTER_OTLP_PROTOCOL` overrides).
    pub otlp_protocol: Option<OtlpProtocol>,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// More resource attributes (e.g. `deployment.environment = "prod"`).
    #[serde(default)]
    pub resource_attributes: std::collections::BTreeMap<String, String>,
    /// `text` (default) or `json`; `GATEWAY_LOG_FORMAT` overrides.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Record the per-request Prometheus series (default); `false` for overhead benchmarks.
    #[serde(default = "default_true")]
    pub metrics: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: None,
            service_name: default_service_name(),
            resource_attributes: Default::default(),
            log_format: LogFormat::default(),
            metrics: true,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_service_name() -> String {
    "gateway".to_string()
}

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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body_bytes(),
            request_timeout_secs: default_request_timeout_secs(),
            cors_origins: Vec::new(),
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
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A model served by a local engine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The id clients put in `model`.
    pub id: String,
    /// `gguf` (default): a candle engine on a GGUF file. `synthetic`: a benchmark tool that
    /// streams tokens without running a model (see `[models.synthetic]`).
    #[serde(default)]
    pub kind: ModelKind,
    /// Behaviour of a `synthetic` model.
    pub synthetic: Option<SyntheticConfig>,
    /// GGUF file. Absent: the embedded default model, fetched into the cache if missing.
    pub path: Option<PathBuf>,
    /// Where the model runs when it names no `pools`: `cpu`, `cuda:N` (feature `cuda`),
    /// `metal:N` (feature `metal`).
    #[serde(default = "default_device")]
    pub device: String,
    /// Pools serving this model, in order of preference (absent: one local replica on
    /// `device`, in a pool named `local`).
    #[serde(default)]
    pub pools: Vec<String>,
    /// Per tenant tier, the pools in that tier's order (e.g. `premium = ["gpu-h100", "npu"]`).
    #[serde(default)]
    pub tiers: std::collections::BTreeMap<String, Vec<String>>,
    /// The model's id on remote upstreams (default: `id`).
    pub upstream_model: Option<String>,
    /// Context window of remote replicas (local engines read it from the model; default 8192).
    pub context_length: Option<usize>,
    /// `q8_0` (re-quantize coarser formats at load, the fast CPU path) or `as-stored`.
    #[serde(default)]
    pub weights: WeightsConfig,
    /// Tokens per forward pass (decodes and prefill chunks together).
    pub max_batch_tokens: Option<usize>,
    /// Sequences in the running batch.
    pub max_running: Option<usize>,
    /// Largest prompt chunk of one sequence per step.
    pub prefill_chunk: Option<usize>,
    /// KV cache size in tokens; absent: the model's context length.
    pub kv_cache_tokens: Option<usize>,
    /// Admit across tenants by weighted virtual token counters (default); `false`: first come,
    /// first served.
    pub fair_share: Option<bool>,
}

impl ModelConfig {
    /// The request core's settings: configured values over the defaults.
    pub fn core(&self) -> CoreConfig {
        let d = CoreConfig::default();
        CoreConfig {
            max_batch_tokens: self.max_batch_tokens.unwrap_or(d.max_batch_tokens),
            max_running: self.max_running.unwrap_or(d.max_running),
            prefill_chunk: self.prefill_chunk.unwrap_or(d.prefill_chunk),
            kv_cache_tokens: self.kv_cache_tokens.or(d.kv_cache_tokens),
            fair_share: self.fair_share.unwrap_or(d.fair_share),
            ..d
        }
    }
}

/// What runs behind a model id.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    #[default]
    Gguf,
    /// Benchmark tool only: measures the gateway's own overhead; its output is meaningless.
    Synthetic,
}

/// `[models.synthetic]`: how the benchmark engine streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Tokens per second of each stream; 0 (default): unpaced.
    #[serde(default)]
    pub tokens_per_second: f64,
    /// Tokens per request (capped by `max_tokens`); absent: exactly `max_tokens`.
    pub output_tokens: Option<usize>,
    /// Context window requests are checked against (default 8192).
    pub context_length: Option<usize>,
}

impl SyntheticConfig {
    pub fn options(&self) -> engines::SyntheticOptions {
        let d = engines::SyntheticOptions::default();
        engines::SyntheticOptions {
            tokens_per_second: self.tokens_per_second,
            output_tokens: self.output_tokens,
            context_length: self.context_length.unwrap_or(d.context_length),
            ..d
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WeightsConfig {
    #[serde(rename = "q8_0")]
    Q8_0,
    #[default]
    AsStored,
}

impl From<WeightsConfig> for WeightFormat {
    fn from(w: WeightsConfig) -> Self {
        match w {
            WeightsConfig::Q8_0 => WeightFormat::Q8_0,
            WeightsConfig::AsStored => WeightFormat::AsStored,
        }
    }
}

/// A tenant: its keys, models and limits (absent limits are unlimited).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: TenantId,
    /// Stored forms (`sha256:<hex>`) of the tenant's keys; never plaintext.
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub models: ModelAllowList,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub daily_tokens: Option<u64>,
    /// Fair share relative to other tenants (default 1).
    pub weight: Option<f64>,
    /// Service tier; `[models.tiers]` may route it to other pools.
    pub tier: Option<String>,
}

impl TenantConfig {
    /// A tenant with these stored keys, every model, and no limits.
    pub fn unlimited(id: TenantId, keys: Vec<String>) -> Self {
        Self {
            id,
            keys,
            models: ModelAllowList::all(),
            requests_per_minute: None,
            tokens_per_minute: None,
            max_concurrent: None,
            daily_tokens: None,
            weight: None,
            tier: None,
        }
    }

    pub fn spec(&self) -> TenantSpec {
        TenantSpec {
            id: self.id.clone(),
            models: self.models.clone(),
            limits: TenantLimits {
                requests_per_minute: self.requests_per_minute,
                tokens_per_minute: self.tokens_per_minute,
                max_concurrent: self.max_concurrent,
                daily_tokens: self.daily_tokens,
                weight: self.weight.unwrap_or(1.0),
            },
            tier: self.tier.clone(),
        }
    }
}

fn default_listen() -> SocketAddr {
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

fn deserialize_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    resolve_listen(&text).map_err(serde::de::Error::custom)
}
fn default_max_body_bytes() -> usize {
    2 * 1024 * 1024
}
fn default_request_timeout_secs() -> u64 {
    600
}
fn default_device() -> String {
    "cpu".to_string()
}
fn default_models() -> Vec<ModelConfig> {
    vec![ModelConfig {
        id: DEFAULT_MODEL_ID.to_string(),
        kind: ModelKind::Gguf,
        synthetic: None,
        path: None,
        device: default_device(),
        pools: Vec::new(),
        tiers: Default::default(),
        upstream_model: None,
        context_length: None,
        weights: WeightsConfig::default(),
        max_batch_tokens: None,
        max_running: None,
        prefill_chunk: None,
        kv_cache_tokens: None,
        fair_share: None,
    }]
}

impl Default for GatewayConfig {
    /// The embedded default: the default model on the CPU, on 127.0.0.1:8080, no tenants (the
    /// command line adds the `demo` tenant).
    fn default() -> Self {
        Self {
            listen: default_listen(),
            server: ServerConfig::default(),
            engine: EngineConfig::default(),
            tls: None,
            models: default_models(),
            tenants: Vec::new(),
            admin_keys: Vec::new(),
            ledger: LedgerConfig::default(),
            telemetry: TelemetryConfig::default(),
            pools: Vec::new(),
            routing: RoutingConfig::default(),
        }
    }
}

impl GatewayConfig {
    /// Reads a file; relative paths inside it are taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for model in &mut config.models {
            if let Some(p) = model.path.as_mut() {
                resolve(p);
            }
        }
        if let Some(p) = config.ledger.path.as_mut() {
            resolve(p);
        }
        if let Some(tls) = config.tls.as_mut() {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
        }
        config.validate()?;
        Ok(config)
    }

    /// The command line's `--listen` and `--model` (the first model's GGUF file) over the file.
    pub fn apply_overrides(
        &mut self,
        listen: Option<SocketAddr>,
        model: Option<PathBuf>,
    ) -> Result<(), ConfigError> {
        if let Some(listen) = listen {
            self.listen = listen;
        }
        if let Some(model) = model {
            let first = self
                .models
                .first_mut()
                .ok_or_else(|| ConfigError::Invalid("the config names no model".into()))?;
            first.path = Some(model);
        }
        Ok(())
    }

    /// Checks what serde cannot: unique model ids, known devices, parseable keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for origin in &self.server.cors_origins {
            let valid = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && axum::http::HeaderValue::from_str(origin).is_ok());
            if !valid {
                return Err(ConfigError::Invalid(format!(
                    "[server] cors_origins: `{origin}` is not an origin (scheme://host[:port], no path) or `*`"
                )));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for model in &self.models {
            if !seen.insert(model.id.as_str()) {
                return Err(ConfigError::DuplicateModel(model.id.clone()));
            }
            parse_device(&model.device).map_err(|reason| ConfigError::Device {
                model: model.id.clone(),
                device: model.device.clone(),
                reason,
            })?;
            if model.synthetic.is_some() != (model.kind == ModelKind::Synthetic) {
                return Err(ConfigError::Invalid(format!(
                    "model `{}`: `[models.synthetic]` goes with `kind = \"synthetic\"`, and only with it",
                    model.id
                )));
            }
            if let Some(synthetic) = &model.synthetic {
                let rate = synthetic.tokens_per_second;
                if !(rate >= 0.0 && rate.is_finite()) {
                    return Err(ConfigError::Invalid(format!(
                        "model `{}`: `tokens_per_second` must be a number >= 0",
                        model.id
                    )));
                }
            }
            let core = model.core();
            let zero = [
                ("max_batch_tokens", core.max_batch_tokens),
                ("max_running", core.max_running),
                ("prefill_chunk", core.prefill_chunk),
                ("kv_cache_tokens", core.kv_cache_tokens.unwrap_or(1)),
            ]
            .into_iter()
            .find(|(_, v)| *v == 0);
            if let Some((field, _)) = zero {
                return Err(ConfigError::Invalid(format!(
                    "model `{}`: `{field}` must be at least 1",
                    model.id
                )));
            }
        }
        self.validate_pools()?;
        for tenant in &self.tenants {
            if tenant.weight.is_some_and(|w| !(w > 0.0 && w.is_finite())) {
                return Err(ConfigError::Invalid(format!(
                    "tenant `{}`: `weight` must be positive",
                    tenant.id
                )));
            }
        }
        for key in &self.admin_keys {
            KeyDigest::parse(key)?;
        }
        self.key_store().map(|_| ())
    }

    /// Pools: unique names, the right replicas for their kind, known devices, and models that
    /// name only configured pools.
    fn validate_pools(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut names = std::collections::HashSet::new();
        for pool in &self.pools {
            if !names.insert(pool.name.as_str()) {
                return invalid(format!("pool `{}` is configured twice", pool.name));
            }
            match pool.kind {
                PoolKindConfig::Local => {
                    if pool.devices.is_empty() || !pool.urls.is_empty() {
                        return invalid(format!(
                            "pool `{}`: a local pool lists `devices` (and no `urls`)",
                            pool.name
                        ));
                    }
                    for device in &pool.devices {
                        parse_device(device).map_err(|reason| {
                            ConfigError::Invalid(format!("pool `{}`: {reason}", pool.name))
                        })?;
                    }
                }
                PoolKindConfig::Remote => {
                    if pool.urls.is_empty() || !pool.devices.is_empty() {
                        return invalid(format!(
                            "pool `{}`: a remote pool lists `urls` (and no `devices`)",
                            pool.name
                        ));
                    }
                }
            }
        }
        for model in &self.models {
            let named = model.pools.iter().chain(model.tiers.values().flatten());
            for name in named {
                if !names.contains(name.as_str()) {
                    return invalid(format!(
                        "model `{}` names pool `{name}`, which is not configured",
                        model.id
                    ));
                }
            }
            if model.pools.is_empty() && !model.tiers.is_empty() {
                return invalid(format!(
                    "model `{}`: `tiers` choose among pools; list the default `pools` too",
                    model.id
                ));
            }
            for (tier, pools) in &model.tiers {
                if pools.is_empty() {
                    return invalid(format!(
                        "model `{}`: tier `{tier}` lists no pools",
                        model.id
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every pool `model` may use: its `pools`, then those only its tiers name.
    pub fn pools_of(&self, model: &ModelConfig) -> Vec<PoolConfig> {
        if model.pools.is_empty() {
            return vec![PoolConfig::implicit_local(&model.device)];
        }
        let mut names: Vec<&String> = model.pools.iter().collect();
        for name in model.tiers.values().flatten() {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
            .into_iter()
            .filter_map(|name| self.pools.iter().find(|p| &p.name == name).cloned())
            .collect()
    }

    /// The key store of every configured tenant.
    pub fn key_store(&self) -> Result<KeyStore, ConfigError> {
        let mut entries = Vec::new();
        for tenant in &self.tenants {
            for stored in &tenant.keys {
                let digest = KeyDigest::parse(stored).map_err(|source| ConfigError::Key {
                    tenant: tenant.id.clone(),
                    source,
                })?;
                entries.push((digest, tenant.spec()));
            }
        }
        Ok(KeyStore::new(entries)?)
    }
}

/// Parses a device name (`cpu`, `cuda:N`, `metal:N`).
pub fn parse_device(name: &str) -> Result<DeviceSpec, String> {
    name.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/gateway.toml");
        let config = GatewayConfig::load(&path).unwrap();
        assert_eq!(config.models[0].id, DEFAULT_MODEL_ID);
        assert!(!config.tenants.is_empty());
        assert!(!config.key_store().unwrap().is_empty());
        assert_eq!(config.admin_keys.len(), 1);
        assert_eq!(config.tenants[0].spec().limits.weight, 2.0);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_keys() {
        assert!(toml::from_str::<GatewayConfig>("listne = \"x\"").is_err());
        let bad_key = r#"
            [[tenants]]
            id = "a"
            keys = ["plaintext-key"]
        "#;
        let config: GatewayConfig = toml::from_str(bad_key).unwrap();
        assert!(matches!(config.validate(), Err(ConfigError::Key { .. })));
    }

    #[test]
    fn rejects_duplicate_models_and_unknown_devices() {
        let dup = "[[models]]\nid = \"m\"\n[[models]]\nid = \"m\"\n";
        let config: GatewayConfig = toml::from_str(dup).unwrap();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::DuplicateModel(_))
        ));
        let gpu = "[[models]]\nid = \"m\"\ndevice = \"tpu:0\"\n";
        let config: GatewayConfig = toml::from_str(gpu).unwrap();
        assert!(matches!(config.validate(), Err(ConfigError::Device { .. })));
    }

    #[test]
    fn synthetic_models_need_their_table() {
        let ok = "[[models]]\nid = \"s\"\nkind = \"synthetic\"\n[models.synthetic]\ntokens_per_second = 20\n";
        let config: GatewayConfig = toml::from_str(ok).unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.models[0]
                .synthetic
                .as_ref()
                .unwrap()
                .options()
                .tokens_per_second,
            20.0
        );
        let missing = "[[models]]\nid = \"s\"\nkind = \"synthetic\"\n";
        let config: GatewayConfig = toml::from_str(missing).unwrap();
        assert!(matches!(config.validate(), Err(ConfigError::Invalid(_))));
        let stray = "[[models]]\nid = \"s\"\n[models.synthetic]\n";
        let config: GatewayConfig = toml::from_str(stray).unwrap();
        assert!(matches!(config.validate(), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn defaults_serve_the_embedded_model() {
        let config: GatewayConfig = toml::from_str("").unwrap();
        assert_eq!(config.listen, default_listen());
        let named: GatewayConfig = toml::from_str("listen = \"localhost:9000\"").unwrap();
        assert_eq!(named.listen.port(), 9000);
        assert!(named.listen.ip().is_loopback());
        assert!(resolve_listen("no port here").is_err());
        assert_eq!(config.models.len(), 1);
        assert!(config.models[0].path.is_none());
        assert_eq!(config.server.max_body_bytes, 2 * 1024 * 1024);
    }
}

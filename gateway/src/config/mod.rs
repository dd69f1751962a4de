//! The gateway's configuration file (TOML), documented in `docs/configuration.md`: the whole
//! file and its loading and checks here, one module per section.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use local_engine::DeviceSpec;
use model_fetch::{DEFAULT_MODEL, DEFAULT_MODEL_ID};
use policies::{KeyDigest, TenantId};
use serde::Deserialize;

mod adapters;
mod batches;
mod console;
mod control_plane;
mod ledger;
mod models;
mod pools;
mod quotas;
mod server;
mod telemetry;
mod tenants;

pub use adapters::*;
pub use batches::*;
pub use console::*;
pub use control_plane::*;
pub use ledger::*;
pub use models::*;
pub use pools::*;
pub use quotas::*;
pub use server::*;
pub use telemetry::*;
pub use tenants::*;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    /// The file is not valid TOML for this schema.
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: toml::de::Error,
    },
    #[error("tenant `{tenant}`: {source}")]
    /// A tenant's stored key is malformed.
    Key {
        /// The tenant.
        tenant: TenantId,
        /// What is wrong with the key.
        source: policies::KeyError,
    },
    #[error(transparent)]
    /// Keys that cannot be stored together (a malformed admin key, a key of two tenants).
    Keys(#[from] policies::KeyError),
    #[error("{0}")]
    /// A value serde accepts but the gateway cannot use.
    Invalid(String),
    #[error("model `{0}` is configured twice")]
    /// Two models with one id.
    DuplicateModel(String),
    #[error("model `{model}`: device `{device}`: {reason}")]
    /// A model names a device that does not exist in this build.
    Device {
        /// The model.
        model: String,
        /// The device it names.
        device: String,
        /// Why it cannot be used.
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
    /// `[server]`: limits at the edge.
    pub server: ServerConfig,
    #[serde(default)]
    /// `[engine]`: process-wide engine settings.
    pub engine: EngineConfig,
    /// Serve HTTPS with these PEM files instead of plain HTTP.
    pub tls: Option<TlsConfig>,
    #[serde(default = "default_models")]
    /// `[[models]]`: what is served (default: the embedded default model).
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    /// `[[tenants]]`: who may call.
    pub tenants: Vec<TenantConfig>,
    /// A hot reload that would leave no tenant, or no admin key, where there were some is
    /// refused (an empty or half-written file must not lock everyone out) unless this is true.
    #[serde(default)]
    pub allow_empty_reload: bool,
    /// Stored forms of the keys that may use `/admin/*`.
    #[serde(default)]
    pub admin_keys: Vec<String>,
    #[serde(default)]
    /// `[ledger]`: the usage ledger.
    pub ledger: LedgerConfig,
    #[serde(default)]
    /// `[control_plane]`: the store of tenants, projects and keys that the admin API changes.
    pub control_plane: ControlPlaneConfig,
    #[serde(default)]
    /// `[batches]`: the Files and Batch APIs' limits, and how replicas run batches.
    pub batches: BatchesConfig,
    #[serde(default)]
    /// `[console]`: the operators' web console.
    pub console: ConsoleConfig,
    /// `[[adapters]]`: LoRA adapters served over local models.
    #[serde(default)]
    pub adapters: Vec<AdapterConfig>,
    /// `[adapter_registry]`: adapters registered through the admin API.
    #[serde(default)]
    pub adapter_registry: AdapterRegistryConfig,
    #[serde(default)]
    /// `[quotas]`: where tenants' limits are counted (this process, or Redis for a fleet).
    pub quotas: QuotasConfig,
    #[serde(default)]
    /// `[telemetry]`: logs, metrics, traces.
    pub telemetry: TelemetryConfig,
    /// Named pools of replicas that models are routed to.
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
    #[serde(default)]
    /// `[routing]`: timeouts, circuit breakers, health checks.
    pub routing: RoutingConfig,
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
            allow_empty_reload: false,
            ledger: LedgerConfig::default(),
            control_plane: ControlPlaneConfig::default(),
            batches: BatchesConfig::default(),
            console: ConsoleConfig::default(),
            adapters: Vec::new(),
            adapter_registry: AdapterRegistryConfig::default(),
            quotas: QuotasConfig::default(),
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
        for adapter in &mut config.adapters {
            resolve(&mut adapter.path);
        }
        if let Some(p) = config.adapter_registry.directory.as_mut() {
            resolve(p);
        }
        if let Some(p) = config.adapter_registry.cache_directory.as_mut() {
            resolve(p);
        }
        if let Some(tls) = config.tls.as_mut() {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
        }
        config.name_models()?;
        config.validate()?;
        Ok(config)
    }

    /// Gives each GGUF model without an `id` the one its file names (a slug of
    /// `general.name`, else of the file name).
    pub fn name_models(&mut self) -> Result<(), ConfigError> {
        for model in &mut self.models {
            if !model.id.is_empty() {
                continue;
            }
            let path = match (&model.path, model.kind) {
                (Some(path), ModelKind::Gguf) => path,
                _ => {
                    return Err(ConfigError::Invalid(
                        "a model without `id` must be a GGUF file with a `path`".into(),
                    ))
                }
            };
            model.id = local_engine::model_id_from_file(path)
                .map_err(|e| ConfigError::Invalid(format!("a model without `id`: {e}")))?;
        }
        Ok(())
    }

    /// The command line's `--listen` and `--model` (the first model's GGUF file) over the file.
    /// The embedded default model given another file by `--model` takes that file's id.
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
            let default_file = model
                .file_name()
                .is_some_and(|name| name == DEFAULT_MODEL.file_name);
            if first.path.is_none() && first.id == DEFAULT_MODEL_ID && !default_file {
                first.id.clear();
            }
            first.path = Some(model);
            self.name_models()?;
            self.validate()?;
        }
        Ok(())
    }

    /// `[[adapters]]`: unique ids without `:`, none a model's id, each over a configured model.
    fn validate_adapters(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for adapter in &self.adapters {
            let id = &adapter.id;
            let invalid = |why: String| ConfigError::Invalid(format!("[[adapters]] `{id}`: {why}"));
            if id.is_empty() || id.contains(':') || id.chars().any(char::is_whitespace) {
                return Err(invalid("an id is non-empty, without `:` or spaces".into()));
            }
            if !seen.insert(id.as_str()) {
                return Err(invalid("two adapters have this id".into()));
            }
            if self.models.iter().any(|m| &m.id == id) {
                return Err(invalid("a model has this id".into()));
            }
            if !self.models.iter().any(|m| m.id == adapter.model) {
                return Err(invalid(format!(
                    "no model `{}` is configured",
                    adapter.model
                )));
            }
        }
        Ok(())
    }

    /// Checks what serde cannot: unique model ids, known devices, parseable keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.control_plane.alert_webhook_url {
            let valid = (url.starts_with("http://") || url.starts_with("https://"))
                && url.parse::<axum::http::Uri>().is_ok();
            if !valid {
                return Err(ConfigError::Invalid(format!(
                    "[control_plane] alert_webhook_url: `{url}` is not an http(s) URL"
                )));
            }
        }
        if let Some(t) = self
            .control_plane
            .alert_thresholds_percent
            .iter()
            .find(|t| **t == 0 || **t > 100)
        {
            return Err(ConfigError::Invalid(format!(
                "[control_plane] alert_thresholds_percent: {t} is not 1-100"
            )));
        }
        let currency = &self.control_plane.currency;
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ConfigError::Invalid(format!(
                "[control_plane] currency: `{currency}` is not an ISO 4217 code (three capital letters, e.g. EUR)"
            )));
        }
        if self.server.header_read_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "[server] header_read_timeout_secs must be at least 1".into(),
            ));
        }
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
        self.validate_adapters()?;
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
            // No pools: in this process. Pools: remote ones only (their upstreams embed).
            let remote_only = model.pools.is_empty()
                || self
                    .pools_of(model)
                    .iter()
                    .all(|p| p.kind == PoolKindConfig::Remote);
            if model.kind == ModelKind::Embedding && (model.device != "cpu" || !remote_only) {
                return Err(ConfigError::Invalid(format!(
                    "model `{}`: an embedding model runs on `device = \"cpu\"` in this process, or on remote pools' upstreams (local pools and other devices are not supported for embeddings yet)",
                    model.id
                )));
            }
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
            if let Some((name, why)) = model.defaults.out_of_range() {
                return Err(ConfigError::Invalid(format!(
                    "model `{}`: `[models.defaults] {name}` must be {why}",
                    model.id
                )));
            }
            if model
                .saturated_wait_secs
                .is_some_and(|s| !(s >= 0.0 && s.is_finite() && s <= 3600.0))
            {
                return Err(ConfigError::Invalid(format!(
                    "model `{}`: `saturated_wait_secs` must be between 0 and 3600",
                    model.id
                )));
            }
            let core = model.core(DeviceSpec::Cpu);
            let zero = [
                ("max_batch_tokens", core.max_batch_tokens),
                ("max_running", core.max_running),
                ("prefill_chunk", core.prefill_chunk),
                ("kv_cache_tokens", core.kv_cache_tokens.unwrap_or(1)),
                ("max_waiting_per_tenant", core.max_waiting_per_tenant),
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
            let shares = [
                ("max_running_share", tenant.max_running_share),
                ("max_kv_share", tenant.max_kv_share),
            ];
            for (field, share) in shares {
                if share.is_some_and(|s| !(s > 0.0 && s <= 1.0)) {
                    return Err(ConfigError::Invalid(format!(
                        "tenant `{}`: `{field}` must be above 0 and at most 1",
                        tenant.id
                    )));
                }
            }
            if tenant.max_waiting == Some(0) {
                return Err(ConfigError::Invalid(format!(
                    "tenant `{}`: `max_waiting` must be at least 1",
                    tenant.id
                )));
            }
        }
        for key in &self.admin_keys {
            KeyDigest::parse(key)?;
        }
        self.key_store().map(|_| ())
    }
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
        assert_eq!(config.tenants[0].spec().limits.share.weight, 2.0);
    }

    /// The fleet configurations shipped in deploy/ (compose and Kubernetes) load, and each
    /// counts limits in Redis once the URL comes from the environment.
    #[test]
    fn deploy_configs_load_and_share_their_limits_in_redis() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        for file in ["compose/gateway.toml", "kubernetes/base/gateway.toml"] {
            let config = GatewayConfig::load(&root.join(file))
                .unwrap_or_else(|e| panic!("deploy/{file}: {e}"));
            assert!(!config.tenants.is_empty(), "{file}");
            assert_eq!(config.admin_keys.len(), 1, "{file}");
            assert_eq!(
                config.quotas.on_unavailable,
                redis_quotas::OnUnavailable::FailOpen
            );
            assert!(
                config.quotas.redis_url.is_none(),
                "the URL is a secret: {file}"
            );
        }
        let quotas: QuotasConfig = toml::from_str(
            "redis_url = \"redis://r:6379/0\"\non_unavailable = \"fail_closed\"\nlease_secs = 3",
        )
        .unwrap();
        let settings = quotas.redis().unwrap();
        assert_eq!(
            (
                settings.on_unavailable,
                settings.lease,
                settings.namespace.as_str()
            ),
            (
                redis_quotas::OnUnavailable::FailClosed,
                std::time::Duration::from_secs(3),
                "gateway"
            )
        );
        assert!(toml::from_str::<QuotasConfig>("on_unavailable = \"maybe\"").is_err());
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
    fn scheduling_terms_parse_and_are_validated() {
        let good = "[[models]]\nid = \"m\"\nlower_class_step_tokens = 4\npause_for_higher_class = false\nreserved_interactive_slots = 2\n[[tenants]]\nid = \"t\"\npriority = \"batch\"\nmax_running_share = 0.5\nmax_kv_share = 0.25\nmax_waiting = 8\n";
        let config: GatewayConfig = toml::from_str(good).unwrap();
        config.validate().unwrap();
        let share = config.tenants[0].spec().limits.share;
        assert_eq!(share.priority, policies::Priority::Batch);
        assert_eq!(
            (
                share.max_running_share,
                share.max_kv_share,
                share.max_waiting
            ),
            (Some(0.5), Some(0.25), Some(8))
        );
        let core = config.models[0].core(DeviceSpec::Cpu);
        assert_eq!(core.lower_class_step_tokens, Some(4));
        assert!(!core.pause_for_higher_class);
        assert_eq!(core.reserved_interactive_slots, 2);
        // Absent: by device.
        let plain: GatewayConfig = toml::from_str("[[models]]\nid = \"m\"\n").unwrap();
        assert_eq!(
            plain.models[0]
                .core(DeviceSpec::Cpu)
                .lower_class_step_tokens,
            Some(1)
        );
        assert!(plain.models[0].core(DeviceSpec::Cpu).pause_for_higher_class);
        assert_eq!(
            plain.models[0]
                .core(DeviceSpec::Cuda(0))
                .lower_class_step_tokens,
            Some(64)
        );
        for (bad, field) in [
            ("max_kv_share = 1.5", "max_kv_share"),
            ("max_running_share = 0.0", "max_running_share"),
            ("max_waiting = 0", "max_waiting"),
            ("priority = \"urgent\"", "priority"),
        ] {
            let text = format!("[[tenants]]\nid = \"t\"\n{bad}\n");
            let err = match toml::from_str::<GatewayConfig>(&text) {
                Err(e) => e.to_string(),
                Ok(config) => config.validate().unwrap_err().to_string(),
            };
            assert!(
                err.contains(field) || err.contains("urgent"),
                "{bad}: {err}"
            );
        }
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
    fn model_sampling_defaults_are_checked_and_come_over_the_embedded_recommendation() {
        let set = "[[models]]\nid = \"m\"\n[models.defaults]\ntemperature = 0.0\nrepetition_penalty = 1.1\n";
        let config: GatewayConfig = toml::from_str(set).unwrap();
        config.validate().unwrap();
        let defaults = config.models[0].sampling_defaults(true);
        assert_eq!(defaults.temperature, Some(0.0));
        assert_eq!(
            defaults.top_p,
            Some(0.9),
            "the embedded model's recommendation"
        );
        // Served by an upstream: only what the operator set.
        assert_eq!(config.models[0].sampling_defaults(false).top_p, None);
        // Another file: no embedded recommendation.
        let other = "[[models]]\nid = \"m\"\npath = \"/m/qwen.gguf\"\n";
        let config: GatewayConfig = toml::from_str(other).unwrap();
        assert_eq!(config.models[0].sampling_defaults(true).temperature, None);
        let hot = "[[models]]\nid = \"m\"\n[models.defaults]\ntemperature = 3.0\n";
        let config: GatewayConfig = toml::from_str(hot).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("temperature"), "{err}");
        let unknown = "[[models]]\nid = \"m\"\n[models.defaults]\ntemprature = 0.5\n";
        assert!(toml::from_str::<GatewayConfig>(unknown).is_err());
    }

    #[test]
    fn defaults_serve_the_embedded_model() {
        let config: GatewayConfig = toml::from_str("").unwrap();
        assert_eq!(config.listen, default_listen());
        let named: GatewayConfig = toml::from_str("listen = \"localhost:9000\"").unwrap();
        assert_eq!(named.listen.port(), 9000);
        assert!(named.listen.ip().is_loopback());
        assert!(resolve_listen("no port here").is_err());
        // The chat model, and the embedding model beside it.
        let kinds: Vec<(&str, ModelKind)> = config
            .models
            .iter()
            .map(|m| (m.id.as_str(), m.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                (DEFAULT_MODEL_ID, ModelKind::Gguf),
                (model_fetch::EMBEDDING_MODEL_ID, ModelKind::Embedding)
            ]
        );
        assert!(config.models.iter().all(|m| m.path.is_none()));
        config.validate().unwrap();
        let mut on_gpu = config.clone();
        on_gpu.models[1].device = "cuda:0".into();
        assert!(
            on_gpu.validate().is_err(),
            "embedding models run on the CPU"
        );
        assert_eq!(config.server.max_body_bytes, 2 * 1024 * 1024);
    }
}

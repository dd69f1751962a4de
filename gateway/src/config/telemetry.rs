//! `[telemetry]`: logs, metrics and traces.

use serde::Deserialize;

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
    /// OTLP over HTTP with protobuf bodies (port 4318).
    HttpProtobuf,
    #[serde(rename = "grpc")]
    /// OTLP over gRPC (port 4317).
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
    /// Stored forms (`sha256:<hex>`) of the keys that may read `/metrics` (admin keys may too).
    /// Empty (the default): `/metrics` is open, as Prometheus expects on a private network;
    /// set it wherever tenants can reach the gateway, since the series name every tenant.
    #[serde(default)]
    pub metrics_keys: Vec<String>,
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
            metrics_keys: Vec::new(),
        }
    }
}

pub(super) fn default_true() -> bool {
    true
}

fn default_service_name() -> String {
    "gateway".to_string()
}

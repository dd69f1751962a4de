//! Logs and traces: the `tracing` subscriber (text or JSON lines, level from `RUST_LOG`) and, when
//! an OTLP endpoint is configured, an OpenTelemetry layer that exports every span over OTLP
//! (HTTP/protobuf or gRPC) with W3C trace-context propagation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use anyhow::Context;
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, OtlpProtocol, TelemetryConfig};

/// Set once traces are exported, so that building spans by hand costs nothing otherwise.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Keeps the exporter alive; dropping it flushes the spans not yet sent.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("flushing traces at exit: {e}");
            }
        }
    }
}

/// Where spans go: the config's endpoint, else `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces
/// variant), else nowhere.
fn otlp_target(config: &TelemetryConfig) -> Option<(Option<String>, OtlpProtocol)> {
    let from_env = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Ok("grpc") => OtlpProtocol::Grpc,
        Ok("http/protobuf") => OtlpProtocol::HttpProtobuf,
        _ => config.otlp_protocol.unwrap_or_default(),
    };
    match &config.otlp_endpoint {
        Some(endpoint) => Some((Some(endpoint.clone()), protocol)),
        None if from_env => Some((None, protocol)),
        None => None,
    }
}

/// The log filter `RUST_LOG` asks for; `info` when it is unset, empty or unreadable (an empty
/// filter has no directive at all and would log nothing, not even errors).
fn log_filter(rust_log: &str) -> EnvFilter {
    match rust_log.trim() {
        "" => EnvFilter::new("info"),
        directives => EnvFilter::try_new(directives).unwrap_or_else(|error| {
            eprintln!("RUST_LOG={directives:?} cannot be read ({error}); logging at info");
            EnvFilter::new("info")
        }),
    }
}

/// Installs the global subscriber. Call inside the tokio runtime (the gRPC exporter needs it).
pub fn init(config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    let format = match std::env::var("GATEWAY_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        Ok("text") => LogFormat::Text,
        _ => config.log_format,
    };
    let rust_log = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = log_filter(&rust_log);
    // The config watcher's library logs every file event in the config's folder at debug and
    // trace: with the log file in that folder, each line written is an event it logs, a loop
    // (425 MB in 15 s). It stays at warn unless RUST_LOG names it.
    if !rust_log.contains("notify") {
        for quiet in ["notify=warn", "inotify=warn"] {
            filter = filter.add_directive(quiet.parse()?);
        }
    }
    let logs = match format {
        // Colours only for a person at a terminal, never into files or pipes.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
        // One object per line; the request span's fields (request id, tenant, key id) ride along.
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);

    let Some((endpoint, protocol)) = otlp_target(config) else {
        tracing_subscriber::registry().with(logs).init();
        return Ok(TelemetryGuard { provider: None });
    };
    let exporter = match protocol {
        OtlpProtocol::HttpProtobuf => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(reqwest_blocking_client()?);
            if let Some(base) = &endpoint {
                // The config names the collector, as OTEL_EXPORTER_OTLP_ENDPOINT does; the
                // traces path is appended the same way.
                builder =
                    builder.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
            }
            builder.build()
        }
        OtlpProtocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(endpoint) = &endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            builder.build()
        }
    }
    .context("building the OTLP span exporter")?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attributes(
            config
                .resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("gateway");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    // Only our spans go to the collector (not every dependency's debug spans).
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(EnvFilter::new("gateway=info"));
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    EXPORTING.store(true, Ordering::Relaxed);
    tracing::info!(
        ?protocol,
        endpoint = endpoint.as_deref().unwrap_or("(from the environment)"),
        "exporting traces over OTLP"
    );
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// The batch exporter runs on its own thread, so it needs a blocking HTTP client; built on a
/// plain thread because reqwest's blocking client may not be created inside a tokio runtime.
fn reqwest_blocking_client() -> anyhow::Result<reqwest::blocking::Client> {
    std::thread::spawn(|| {
        reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("building the OTLP HTTP client panicked"))?
    .context("building the OTLP HTTP client")
}

/// Continues the caller's trace: the W3C `traceparent` (and `tracestate`) of `headers` becomes
/// the parent of `span`.
pub fn continue_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The W3C `traceparent` of `span`, for requests the gateway makes upstream (`None` when no
/// traces are exported).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    let mut headers = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&span.context(), &mut headers)
    });
    headers.remove("traceparent")
}

/// Adds a finished child span with known start and end times under `parent` (the engine reports
/// queue, prefill and decode durations after the fact; they happen on its own thread).
pub fn record_phase(
    parent: &tracing::Span,
    name: &'static str,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let tracer = opentelemetry::global::tracer("gateway");
    let context = parent.context();
    let mut span = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, &context);
    span.end_with_timestamp(end);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::level_filters::LevelFilter;

    #[test]
    fn an_unset_or_empty_rust_log_logs_at_info() {
        for unset in ["", "  ", "not a [valid filter"] {
            assert_eq!(
                log_filter(unset).max_level_hint(),
                Some(LevelFilter::INFO),
                "{unset:?}"
            );
        }
        assert_eq!(log_filter("warn").max_level_hint(), Some(LevelFilter::WARN));
    }
}

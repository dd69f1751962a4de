//! The trace span of every request (W3C `traceparent` honoured, see `telemetry`) and its
//! access-log line.
//!
//! The span is opened before anything else runs, so authentication and the handler record into
//! it (`tenant`, `key_id`, `model`, tokens, outcome). The access-log line is written here when the
//! response head goes out, except for generations: their usage account writes a fuller line
//! (tokens, TTFT) when the generation ends and marks the response [`AccessLogWritten`].

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{
    DefaultOnBodyChunk, DefaultOnEos, DefaultOnFailure, DefaultOnRequest, TraceLayer,
};
use tracing::Level;

use crate::extensions::{AccessLogWritten, Polled};

/// The layer type (its callbacks are plain functions, so it can be named).
pub type RequestTraceLayer = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&Request<Body>) -> tracing::Span,
    DefaultOnRequest,
    fn(&Response<Body>, Duration, &tracing::Span),
    DefaultOnBodyChunk,
    DefaultOnEos,
    DefaultOnFailure,
>;

/// The span-and-access-log layer.
pub fn layer() -> RequestTraceLayer {
    TraceLayer::new_for_http()
        .make_span_with(request_span as fn(&Request<Body>) -> tracing::Span)
        .on_response(access_log as fn(&Response<Body>, Duration, &tracing::Span))
        // Failures stay at debug: a 503 from `/ready` while loading is expected, and every
        // response gets its access-log line anyway.
        .on_failure(DefaultOnFailure::new().level(Level::DEBUG))
}

/// The request's span, with empty fields that the layers and the handler fill in.
pub fn request_span(request: &Request<Body>) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The route's template, never the raw path (which may hold a key: `/v1/models/sk-...`).
    let route = crate::paths::template(request.uri().path());
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{} {route}", request.method()),
        otel.kind = "server",
        method = %request.method(),
        path = route,
        request_id,
        client_request_id = request
            .extensions()
            .get::<crate::extensions::ClientRequestId>()
            .map(|id| &*id.0),
        // Filled in by authentication.
        tenant = tracing::field::Empty,
        key_id = tracing::field::Empty,
        // Filled in by the usage account of a generation.
        model = tracing::field::Empty,
        pool = tracing::field::Empty,
        replica = tracing::field::Empty,
        prompt_tokens = tracing::field::Empty,
        completion_tokens = tracing::field::Empty,
        finish_reason = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, request.headers());
    span
}

/// The access-log line of a response (see the module documentation for the exceptions).
pub fn access_log(response: &Response<Body>, latency: Duration, _span: &tracing::Span) {
    let extensions = response.extensions();
    if extensions.get::<AccessLogWritten>().is_some() {
        return;
    }
    let status = response.status().as_u16();
    let latency_ms = latency.as_secs_f64() * 1e3;
    if extensions.get::<Polled>().is_some() {
        tracing::debug!(target: "gateway::access", status, latency_ms, "request finished");
    } else {
        tracing::info!(target: "gateway::access", status, latency_ms, "request finished");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use std::sync::{Arc, Mutex};
    use tower::{Layer, ServiceExt};

    /// Log output, captured.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// How many access-log lines at info level one request with `marker` writes.
    async fn access_lines(marker: Option<&'static str>) -> usize {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let service = layer().layer(tower::service_fn(move |_: Request<Body>| async move {
            let mut response = StatusCode::OK.into_response();
            match marker {
                Some("written") => {
                    response.extensions_mut().insert(AccessLogWritten);
                }
                Some("polled") => {
                    response.extensions_mut().insert(Polled);
                }
                _ => {}
            }
            Ok::<_, std::convert::Infallible>(response)
        }));
        let request = Request::builder()
            .uri("/v1/models")
            .header("x-request-id", "abc")
            .body(Body::empty())
            .unwrap();
        service.oneshot(request).await.unwrap();
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|l| l.contains("request finished"))
            .inspect(|l| assert!(l.contains("request_id=\"abc\"") || l.contains("abc"), "{l}"))
            .count()
    }

    #[tokio::test]
    async fn one_access_line_unless_the_account_writes_it_or_the_route_is_polled() {
        assert_eq!(access_lines(None).await, 1);
        assert_eq!(access_lines(Some("written")).await, 0);
        // Polled routes log at debug, below the info level captured here.
        assert_eq!(access_lines(Some("polled")).await, 0);
    }
}

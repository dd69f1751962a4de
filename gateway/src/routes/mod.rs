//! The HTTP surface: one module per endpoint family, assembled here with the tower layers.

mod admin;
mod generation;
mod health;
mod metrics;
mod models;
mod pools;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Request, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{middleware, BoxError, Router};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use std::time::Duration;

use crate::accounting::Accounted;
use crate::auth::{require_admin_key, require_api_key};
use crate::error::ApiError;
use crate::state::AppState;

/// The whole application: routes, authentication, and the layers every request passes
/// (outermost first): request id, trace span, timeout, body-size limit.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/models", get(models::list))
        .route("/v1/models/{model}", get(models::retrieve))
        .route("/v1/chat/completions", post(generation::chat_completions))
        .route("/v1/completions", post(generation::completions))
        .route("/load", get(pools::load))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let admin_routes = Router::new()
        .route("/admin/tenants", get(admin::tenants))
        .route("/admin/usage", get(admin::usage))
        .route("/admin/usage/records", get(admin::usage_records))
        .route("/admin/pools", get(pools::admin_pools))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_admin_key,
        ));
    let timeout = state.limits.request_timeout;
    Router::new()
        .merge(api)
        .merge(admin_routes)
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(metrics::render))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    // Failures stay at debug: a 503 from `/ready` while loading is expected, and
                    // every response gets its access-log line anyway.
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_response(access_log)
                        .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(HandleErrorLayer::new(timed_out))
                .timeout(timeout),
        )
        .with_state(state)
}

fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{} {}", request.method(), request.uri().path()),
        otel.kind = "server",
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
        tenant = tracing::field::Empty,
        key_id = tracing::field::Empty,
        // Filled in by the account of a generation request.
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

/// The access-log line of a response, unless its account writes a fuller one when the
/// generation ends (see `accounting`).
/// Marks a response whose access-log line goes at debug level: polled endpoints (`/load`,
/// asked by every gateway every few seconds) would drown the requests.
#[derive(Debug, Clone, Copy)]
pub struct Polled;

fn access_log<B>(response: &axum::http::Response<B>, latency: Duration, _span: &tracing::Span) {
    if response.extensions().get::<Polled>().is_some() {
        tracing::debug!(
            target: "gateway::access",
            status = response.status().as_u16(),
            latency_ms = latency.as_secs_f64() * 1e3,
            "request finished"
        );
    } else if response.extensions().get::<Accounted>().is_none() {
        tracing::info!(
            target: "gateway::access",
            status = response.status().as_u16(),
            latency_ms = latency.as_secs_f64() * 1e3,
            "request finished"
        );
    }
}

async fn timed_out(err: BoxError) -> ApiError {
    if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::timeout()
    } else {
        ApiError::internal(format!("unhandled middleware error: {err}"))
    }
}

async fn route_not_found(uri: Uri) -> impl IntoResponse {
    ApiError::route_not_found(uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> impl IntoResponse {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

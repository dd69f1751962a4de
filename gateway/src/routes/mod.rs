//! The HTTP surface: one module per endpoint family, assembled here with the tower layers.

mod admin;
mod embeddings;
mod generation;
mod health;
mod metrics;
mod models;
mod openapi;
mod pools;
mod sizing;
mod version;

use axum::http::{Method, Uri};
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::error::ApiError;
use crate::layers::{
    admission, authentication, body_limit, cors, rate_limit_headers, request_metrics, timeout,
    trace,
};
use crate::openai::response::Endpoint;
use crate::state::AppState;

pub use openapi::openapi_document;

/// The whole application: the routes and, in one place, the layers each request passes, in the
/// order of the request path (outermost first; see `layers`).
pub fn router(state: AppState) -> Router {
    // Generation routes: the preamble sizes the request, then admission weighs it.
    let generation = |endpoint| -> MethodRouter<AppState> {
        let preamble = generation::PreambleState {
            app: state.clone(),
            endpoint,
        };
        post(generation::generate).route_layer(
            ServiceBuilder::new()
                .layer(from_fn_with_state(preamble, generation::prepare))
                .layer(admission::layer(&state)),
        )
    };
    let api = Router::new()
        .route("/v1/models", get(models::list))
        .route("/v1/models/{model}", get(models::retrieve))
        .route("/v1/chat/completions", generation(Endpoint::Chat))
        .route("/v1/completions", generation(Endpoint::Completions))
        .route(
            "/v1/embeddings",
            post(embeddings::embed).route_layer(
                ServiceBuilder::new()
                    .layer(from_fn_with_state(state.clone(), embeddings::prepare))
                    .layer(admission::layer(&state)),
            ),
        )
        .route("/load", get(pools::load))
        .route_layer(
            ServiceBuilder::new()
                .layer(authentication::layer(&state))
                .layer(request_metrics::layer(&state))
                .layer(rate_limit_headers::layer(&state)),
        );
    let admin = Router::new()
        .route("/admin/tenants", get(admin::tenants))
        .route("/admin/usage", get(admin::usage))
        .route("/admin/usage/records", get(admin::usage_records))
        .route("/admin/pools", get(pools::admin_pools))
        .route_layer(authentication::admin_layer(&state));
    let public = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(metrics::render))
        .route("/version", get(version::version))
        .route("/openapi.json", get(openapi::document));
    Router::new()
        .merge(api)
        .merge(admin)
        .merge(public)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(trace::layer())
                .layer(PropagateRequestIdLayer::x_request_id())
                .option_layer(cors::layer(&state.limits.cors_origins))
                .layer(body_limit::layer(state.limits.max_body_bytes))
                .layer(timeout::layer(state.limits.request_timeout)),
        )
        .with_state(state)
}

async fn route_not_found(uri: Uri) -> impl IntoResponse {
    ApiError::route_not_found(uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> impl IntoResponse {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

//! The HTTP surface: one module per endpoint family, assembled here with the tower layers.

mod adapters;
mod admin;
mod allowances;
mod batch_runner;
mod batches;
mod embeddings;
mod files;
mod generation;
mod health;
mod messages;
mod metrics;
mod models;
mod openapi;
mod pipeline;
mod pools;
mod prices;
mod responses;
mod tenancy;
mod version;

use axum::http::{Method, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::error::ApiError;
use crate::layers::{
    anthropic_errors, authentication, body_limit, client_request_id, cors, rate_limit_headers,
    request_metrics, timeout, trace,
};
use crate::paths;
use crate::state::AppState;

pub use adapters::spawn_janitor as spawn_adapter_janitor;
pub use batch_runner::spawn as spawn_batch_runner;
pub use openapi::openapi_document;

/// The whole application: the routes and, in one place, the layers each request passes, in the
/// order of the request path (outermost first; see `layers`).
pub fn router(state: AppState) -> Router {
    // The routes that admission weighs validate and admit in their handlers
    // (`routes::pipeline`); the layers keep what every request needs.
    let api = Router::new()
        .route(paths::MODELS, get(models::list))
        .route(paths::MODEL, get(models::retrieve))
        .route(paths::CHAT_COMPLETIONS, post(generation::chat_completions))
        .route(paths::COMPLETIONS, post(generation::completions))
        .route(paths::EMBEDDINGS, post(embeddings::embed))
        .route(paths::RESPONSES, post(responses::create))
        .route(
            paths::RESPONSE,
            get(responses::retrieve).delete(responses::delete),
        )
        .route(paths::RESPONSE_INPUT_ITEMS, get(responses::input_items))
        .route(
            paths::FILES,
            // The body-limit layer holds uploads to `[batches] max_file_bytes`; axum's own
            // multipart limit (2 MB) is not the gateway's.
            get(files::list)
                .post(files::upload)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(paths::FILE, get(files::retrieve).delete(files::delete))
        .route(paths::FILE_CONTENT, get(files::content))
        .route(paths::BATCHES, get(batches::list).post(batches::create))
        .route(paths::BATCH, get(batches::retrieve))
        .route(paths::BATCH_CANCEL, post(batches::cancel))
        .route(paths::MESSAGES, post(messages::create))
        .route(paths::MESSAGES_COUNT_TOKENS, post(messages::count_tokens))
        .route_layer(
            ServiceBuilder::new()
                .layer(authentication::layer(&state))
                .layer(request_metrics::layer(&state))
                .layer(rate_limit_headers::layer(&state)),
        );
    let admin = admin_routes().route_layer(authentication::admin_layer(&state));
    // The operators' console: HTML over the same admin handlers (its session stands for the
    // admin key; see `console`).
    let console = crate::console::router(&state, admin_routes());
    // An engine-worker's load, read by the gateways that route to it (with the worker's shared
    // secret, its admin key): it shows every tenant's activity, so no tenant key; polled every
    // few seconds by each gateway, so not held to the admin rate limit.
    let polled = Router::new()
        .route(paths::LOAD, get(pools::load))
        .route_layer(authentication::polled_admin_layer(&state));
    let public = Router::new()
        .route(paths::HEALTH, get(health::health))
        .route(paths::READY, get(health::ready))
        .route(paths::METRICS, get(metrics::render))
        .route(paths::VERSION, get(version::version))
        .route(paths::OPENAPI, get(openapi::document));
    Router::new()
        .merge(api)
        .merge(admin)
        .merge(console)
        .merge(polled)
        .merge(public)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(client_request_id::layer())
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(trace::layer())
                .layer(axum::middleware::from_fn(anthropic_errors::rewrite))
                .layer(axum::middleware::from_fn(crate::console::security_headers))
                .layer(PropagateRequestIdLayer::x_request_id())
                .option_layer(cors::layer(&state.limits.cors_origins))
                .layer(body_limit::layer(
                    state.limits.max_body_bytes,
                    vec![
                        (paths::FILES, state.limits.batches.max_file_bytes),
                        (
                            paths::ADMIN_ADAPTERS,
                            state.limits.adapter_registry.max_file_bytes,
                        ),
                    ],
                ))
                .layer(timeout::layer(state.limits.request_timeout)),
        )
        .with_state(state)
}

/// `/admin/*` without their authentication layer: the caller adds how the [`control_plane::Actor`]
/// is found (an admin key, or a console session).
fn admin_routes() -> Router<AppState> {
    Router::new()
        .route(
            paths::ADMIN_TENANTS,
            get(admin::tenants).post(tenancy::create_tenant),
        )
        .route(
            paths::ADMIN_TENANT,
            get(tenancy::get_tenant)
                .patch(tenancy::update_tenant)
                .delete(tenancy::delete_tenant),
        )
        .route(
            paths::ADMIN_PROJECTS,
            get(tenancy::list_projects).post(tenancy::create_project),
        )
        .route(
            paths::ADMIN_PROJECT,
            get(tenancy::get_project)
                .patch(tenancy::update_project)
                .delete(tenancy::delete_project),
        )
        .route(
            paths::ADMIN_TENANT_KEYS,
            get(tenancy::list_tenant_keys).post(tenancy::issue_tenant_key),
        )
        .route(
            paths::ADMIN_KEYS,
            get(tenancy::list_admin_keys).post(tenancy::issue_admin_key),
        )
        .route(
            paths::ADMIN_KEY,
            get(tenancy::get_key).delete(tenancy::revoke_key),
        )
        .route(paths::ADMIN_KEY_ROTATE, post(tenancy::rotate_key))
        .route(paths::ADMIN_AUDIT, get(tenancy::audit))
        .route(paths::ADMIN_PRICES, get(prices::list).post(prices::set))
        .route(
            paths::ADMIN_GRANTS,
            get(allowances::list_grants).post(allowances::create_grant),
        )
        .route(
            paths::ADMIN_BUDGETS,
            get(allowances::list_budgets).post(allowances::create_budget),
        )
        .route(paths::ADMIN_ALLOWANCES, get(allowances::report))
        .route(paths::ADMIN_USAGE, get(admin::usage))
        .route(paths::ADMIN_USAGE_RECORDS, get(admin::usage_records))
        .route(paths::ADMIN_POOLS, get(pools::admin_pools))
        .route(
            paths::ADMIN_ADAPTERS,
            // Uploads are held to `[adapter_registry] max_file_bytes` by the body-limit layer.
            get(adapters::list)
                .post(adapters::register)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            paths::ADMIN_ADAPTER,
            get(adapters::get).delete(adapters::delete),
        )
}

async fn route_not_found(uri: Uri) -> impl IntoResponse {
    ApiError::route_not_found(uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> impl IntoResponse {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

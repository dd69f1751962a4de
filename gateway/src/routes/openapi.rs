//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP surface. Request bodies are
//! generated from the very types the handlers parse (`openai::chat`, `openai::completions`,
//! `openai::params`), so the document cannot drift from what is accepted. The functions below
//! only carry each route's description; the routes themselves are in `routes::router`.

#![allow(dead_code)] // The annotated functions exist for their attributes.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::openai::chat::ChatCompletionRequest;
use crate::openai::completions::CompletionRequest;
use crate::openai::embeddings::EmbeddingRequest;
use crate::openai::params::CommonParams;

/// A chat completion request: the endpoint's fields and the shared sampling parameters.
#[derive(ToSchema)]
struct ChatCompletionBody {
    #[serde(flatten)]
    request: ChatCompletionRequest,
    #[serde(flatten)]
    params: CommonParams,
}

/// A completion request: the endpoint's fields and the shared sampling parameters.
#[derive(ToSchema)]
struct CompletionBody {
    #[serde(flatten)]
    request: CompletionRequest,
    #[serde(flatten)]
    params: CommonParams,
}

/// OpenAI's error body.
#[derive(Serialize, ToSchema)]
struct ErrorBody {
    error: ErrorObject,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
struct ErrorObject {
    /// For people.
    message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `rate_limit_exceeded`, `insufficient_quota` or `server_error`.
    #[serde(rename = "type")]
    kind: String,
    /// The request field at fault, if one is.
    param: Option<String>,
    /// For programs: `invalid_value`, `model_not_found`, `context_length_exceeded`, ...
    code: Option<String>,
}

/// Creates a model response for the chat conversation (JSON, or SSE with `stream`).
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body = ChatCompletionBody,
    responses(
        (status = 200, description = "`chat.completion`, or `text/event-stream` of `chat.completion.chunk` ending with `data: [DONE]`"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 403, description = "Model not allowed for the tenant", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 429, description = "A quota limit; `Retry-After` says when to retry", body = ErrorBody),
        (status = 503, description = "Model loading or no replica available", body = ErrorBody),
    ),
    security(("api_key" = [])))]
fn chat_completions() {}

/// Creates a completion for the prompt(s) (JSON, or SSE with `stream`).
#[utoipa::path(post, path = "/v1/completions", tag = "openai",
    request_body = CompletionBody,
    responses(
        (status = 200, description = "`text_completion`, or `text/event-stream` ending with `data: [DONE]`"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 429, description = "A quota limit", body = ErrorBody),
    ),
    security(("api_key" = [])))]
fn completions() {}

/// Creates embedding vectors of the input(s) with an embedding model.
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai",
    request_body = EmbeddingRequest,
    responses(
        (status = 200, description = "A `list` of `embedding` objects, with `usage`"),
        (status = 400, description = "Invalid request (empty or too long input, `dimensions`, not an embedding model)", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 429, description = "A quota limit", body = ErrorBody),
    ),
    security(("api_key" = [])))]
fn embeddings() {}

/// The models the caller's tenant may use.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "A `list` of `model` objects")),
    security(("api_key" = [])))]
fn list_models() {}

/// One model, if the caller's tenant may use it.
#[utoipa::path(get, path = "/v1/models/{model}", tag = "openai",
    params(("model" = String, Path, description = "The model's id")),
    responses((status = 200, description = "A `model` object"),
        (status = 404, description = "No such model", body = ErrorBody)),
    security(("api_key" = [])))]
fn retrieve_model() {}

/// Each local pool's load, for gateways routing to this one (`/load` health checks): an admin
/// key (on an engine-worker, its shared secret); never a tenant's key.
#[utoipa::path(get, path = "/load", tag = "pools",
    responses((status = 200, description = "Per model: running and waiting sequences, free KV blocks"), (status = 403, description = "Not an admin key", body = ErrorBody)),
    security(("admin_key" = [])))]
fn load() {}

/// Tenants and their live quota state.
#[utoipa::path(get, path = "/admin/tenants", tag = "admin",
    responses((status = 200, description = "Tenants"), (status = 403, description = "Not an admin key", body = ErrorBody)),
    security(("admin_key" = [])))]
fn admin_tenants() {}

/// Usage from the ledger, grouped (`from`, `to`, `tenant`, `model`, `group_by`).
#[utoipa::path(get, path = "/admin/usage", tag = "admin",
    responses((status = 200, description = "Usage rows")),
    security(("admin_key" = [])))]
fn admin_usage() {}

/// Usage records from the ledger (JSON or CSV).
#[utoipa::path(get, path = "/admin/usage/records", tag = "admin",
    responses((status = 200, description = "Usage records")),
    security(("admin_key" = [])))]
fn admin_usage_records() {}

/// Every pool and replica: health, breaker state, outstanding tokens.
#[utoipa::path(get, path = "/admin/pools", tag = "admin",
    responses((status = 200, description = "Pools")),
    security(("admin_key" = [])))]
fn admin_pools() {}

/// Liveness: 200 while the process serves.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "OK")))]
fn health() {}

/// Readiness: 200 once every model is loaded, 503 before.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "Ready"), (status = 503, description = "Loading or failed")))]
fn ready() {}

/// Prometheus metrics (OpenMetrics, or the classic text format on request).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Metrics")))]
fn metrics() {}

/// The build: version, commit, features.
#[utoipa::path(get, path = "/version", tag = "operations", responses((status = 200, description = "Build information")))]
fn version() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1")))]
fn openapi() {}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer =
            || SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        components.add_security_scheme("api_key", bearer());
        components.add_security_scheme("admin_key", bearer());
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Multi-tenant model-serving gateway", description = "OpenAI-compatible API with per-tenant keys, quotas and fair share."),
    paths(chat_completions, completions, embeddings, list_models, retrieve_model, load, admin_tenants,
        admin_usage, admin_usage_records, admin_pools, health, ready, metrics, version, openapi),
    components(schemas(ErrorBody)),
    modifiers(&Security)
)]
struct ApiDoc;

/// The document, with this build's version.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// `GET /openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}

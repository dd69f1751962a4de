//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP surface. Request bodies are
//! generated from the very types the handlers parse (`openai::chat`, `openai::completions`,
//! `openai::params`), so the document cannot drift from what is accepted. The functions below
//! only carry each route's description; the routes themselves are in `routes::router`.

#![allow(dead_code)] // The annotated functions exist for their attributes.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use control_plane::{
    AdapterEntry, AdapterSource, AuditEntry, Budget, Grant, Key, Limits, Price, Project, Role,
    Tenant,
};

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

/// Anthropic's error body (every error of the `/v1/messages` routes).
#[derive(Serialize, ToSchema)]
struct AnthropicErrorBody {
    /// `error`.
    #[serde(rename = "type")]
    kind: String,
    /// `{"type": "invalid_request_error" | "authentication_error" | "permission_error" |
    /// "not_found_error" | "request_too_large" | "rate_limit_error" | "overloaded_error" |
    /// "api_error", "message"}`.
    error: ErrorObject,
}

/// OpenAI's Responses API: a response to text or input items (JSON, or typed events with
/// `stream`); kept for `previous_response_id` and `GET` with `store` (the default) when the
/// control-plane store runs.
#[utoipa::path(post, path = "/v1/responses", tag = "openai",
    request_body(content = Object, description = "`model`, `input` (text or items: `message`, `function_call`, `function_call_output`), `instructions`, `max_output_tokens`, `temperature`, `top_p`, `text.format`, `tools` (functions), `tool_choice`, `stream`, `store`, `previous_response_id`, `metadata`, `user`"),
    responses(
        (status = 200, description = "A `response`, or `text/event-stream` of `response.created` ... `response.completed`"),
        (status = 400, description = "Invalid request, or a `previous_response_id` not found", body = ErrorBody),
        (status = 401, description = "No or unknown API key", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 429, description = "A quota limit", body = ErrorBody),
    ),
    security(("api_key" = [])))]
fn create_response() {}

/// A stored response of the caller's tenant.
#[utoipa::path(get, path = "/v1/responses/{id}", tag = "openai",
    params(("id" = String, Path, description = "`resp_...`")),
    responses((status = 200, description = "The `response`"), (status = 404, description = "None of this tenant's", body = ErrorBody)),
    security(("api_key" = [])))]
fn retrieve_response() {}

/// The items a stored response was made from (its own input), `order=desc|asc`.
#[utoipa::path(get, path = "/v1/responses/{id}/input_items", tag = "openai",
    params(("id" = String, Path, description = "`resp_...`")),
    responses((status = 200, description = "A `list` of items"), (status = 404, description = "None of this tenant's", body = ErrorBody)),
    security(("api_key" = [])))]
fn response_input_items() {}

/// Deletes a stored response of the caller's tenant.
#[utoipa::path(delete, path = "/v1/responses/{id}", tag = "openai",
    params(("id" = String, Path, description = "`resp_...`")),
    responses((status = 200, description = "`{id, object: response.deleted, deleted: true}`"), (status = 404, description = "None of this tenant's", body = ErrorBody)),
    security(("api_key" = [])))]
fn delete_response() {}

/// Uploads a file: multipart `file` (JSONL, checked line by line) and `purpose` (`batch`).
#[utoipa::path(post, path = "/v1/files", tag = "openai",
    request_body(content = Object, content_type = "multipart/form-data", description = "`file`, `purpose=batch`"),
    responses(
        (status = 200, description = "The `file` object"),
        (status = 400, description = "A bad line (the message names it), another purpose, or the tenant's storage full", body = ErrorBody),
        (status = 413, description = "Over `[batches] max_file_bytes`", body = ErrorBody),
    ),
    security(("api_key" = [])))]
fn upload_file() {}

/// The caller's tenant's files.
#[utoipa::path(get, path = "/v1/files", tag = "openai",
    responses((status = 200, description = "A `list` of `file` objects")),
    security(("api_key" = [])))]
fn list_files() {}

/// One file of the caller's tenant.
#[utoipa::path(get, path = "/v1/files/{id}", tag = "openai",
    params(("id" = String, Path, description = "`file-...`")),
    responses((status = 200, description = "The `file` object"), (status = 404, description = "None of this tenant's", body = ErrorBody)),
    security(("api_key" = [])))]
fn retrieve_file() {}

/// Deletes a file of the caller's tenant.
#[utoipa::path(delete, path = "/v1/files/{id}", tag = "openai",
    params(("id" = String, Path, description = "`file-...`")),
    responses((status = 200, description = "`{id, object: file, deleted: true}`"), (status = 404, description = "None of this tenant's", body = ErrorBody)),
    security(("api_key" = [])))]
fn delete_file() {}

/// A file's content.
#[utoipa::path(get, path = "/v1/files/{id}/content", tag = "openai",
    params(("id" = String, Path, description = "`file-...`")),
    responses((status = 200, description = "The bytes"), (status = 404, description = "None of this tenant's", body = ErrorBody)),
    security(("api_key" = [])))]
fn file_content() {}

/// Creates a batch from an uploaded file: its lines run in the `batch` class as backfill.
#[utoipa::path(post, path = "/v1/batches", tag = "openai",
    request_body(content = Object, description = "`input_file_id`, `endpoint` (`/v1/chat/completions` or `/v1/completions`), `completion_window` (`24h`), `metadata`"),
    responses(
        (status = 200, description = "The `batch` object"),
        (status = 400, description = "A bad endpoint, window or line; too many open batches", body = ErrorBody),
        (status = 404, description = "No such file of this tenant's", body = ErrorBody),
    ),
    security(("api_key" = [])))]
fn create_batch() {}

/// The caller's tenant's batches, newest first.
#[utoipa::path(get, path = "/v1/batches", tag = "openai",
    responses((status = 200, description = "A `list` of `batch` objects")),
    security(("api_key" = [])))]
fn list_batches() {}

/// One batch, with its progress.
#[utoipa::path(get, path = "/v1/batches/{id}", tag = "openai",
    params(("id" = String, Path, description = "`batch_...`")),
    responses((status = 200, description = "The `batch` object"), (status = 404, description = "None of this tenant's", body = ErrorBody)),
    security(("api_key" = [])))]
fn retrieve_batch() {}

/// Cancels an open batch: lines not started do not run.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "openai",
    params(("id" = String, Path, description = "`batch_...`")),
    responses((status = 200, description = "The `batch` object, `cancelling`"), (status = 400, description = "Not open", body = ErrorBody), (status = 404, description = "None of this tenant's", body = ErrorBody)),
    security(("api_key" = [])))]
fn cancel_batch() {}

/// Anthropic's Messages API: a message for the conversation (JSON, or a stream of named
/// events with `stream`). The key may come as `x-api-key`; `anthropic-version` is accepted.
#[utoipa::path(post, path = "/v1/messages", tag = "anthropic",
    request_body(content = Object, description = "Anthropic's `MessageCreateParams`: `model`, `max_tokens`, `messages`, `system`, `stop_sequences`, `temperature`, `top_p`, `top_k`, `stream`, `tools`, `tool_choice`, `metadata`"),
    responses(
        (status = 200, description = "A `message`, or `text/event-stream` of `message_start`, `content_block_start`, `content_block_delta`, `content_block_stop`, `message_delta`, `message_stop`"),
        (status = 400, description = "Invalid request", body = AnthropicErrorBody),
        (status = 401, description = "No or unknown API key", body = AnthropicErrorBody),
        (status = 404, description = "No such model", body = AnthropicErrorBody),
        (status = 429, description = "A quota limit", body = AnthropicErrorBody),
    ),
    security(("api_key" = [])))]
fn messages() {}

/// Counts a Messages request's input tokens (template and tools included); nothing is billed.
#[utoipa::path(post, path = "/v1/messages/count_tokens", tag = "anthropic",
    request_body(content = Object, description = "As `/v1/messages`, without `max_tokens`"),
    responses(
        (status = 200, description = "`{\"input_tokens\": n}`"),
        (status = 400, description = "Invalid request", body = AnthropicErrorBody),
    ),
    security(("api_key" = [])))]
fn count_message_tokens() {}

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

/// Tenants and their live quota state (a tenant-admin sees its own); `source` says whether they
/// come from the configuration file or the control-plane store.
#[utoipa::path(get, path = "/admin/tenants", tag = "admin",
    responses((status = 200, description = "Tenants"), (status = 403, description = "Not an admin key", body = ErrorBody)),
    security(("admin_key" = [])))]
fn admin_tenants() {}

/// Creates a tenant (operators; needs `[control_plane] enabled`).
#[utoipa::path(post, path = "/admin/tenants", tag = "control-plane",
    request_body = Tenant,
    responses((status = 201, description = "The tenant", body = Tenant),
        (status = 400, description = "Invalid field (`param` names it), or no control-plane store", body = ErrorBody),
        (status = 403, description = "Not an operator key", body = ErrorBody),
        (status = 409, description = "It exists", body = ErrorBody),
        (status = 429, description = "Admin rate limit", body = ErrorBody),
        (status = 503, description = "The store is unreachable: nothing written", body = ErrorBody)),
    security(("admin_key" = [])))]
fn create_tenant() {}

/// One tenant, with live counters.
#[utoipa::path(get, path = "/admin/tenants/{tenant}", tag = "control-plane",
    params(("tenant" = String, Path)),
    responses((status = 200, description = "The tenant", body = Tenant),
        (status = 403, description = "Another tenant's admin", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)),
    security(("admin_key" = [])))]
fn get_tenant() {}

/// Changes a tenant (operators): a JSON merge patch (`null` clears a field).
#[utoipa::path(patch, path = "/admin/tenants/{tenant}", tag = "control-plane",
    params(("tenant" = String, Path)), request_body = Object,
    responses((status = 200, description = "The tenant after", body = Tenant),
        (status = 400, description = "Invalid field", body = ErrorBody),
        (status = 403, description = "Not an operator key", body = ErrorBody),
        (status = 503, description = "The store is unreachable", body = ErrorBody)),
    security(("admin_key" = [])))]
fn update_tenant() {}

/// Deletes a tenant (operators): disabled, its keys stop; its usage and audit rows stay.
#[utoipa::path(delete, path = "/admin/tenants/{tenant}", tag = "control-plane",
    params(("tenant" = String, Path)),
    responses((status = 200, description = "The tenant, disabled", body = Tenant),
        (status = 403, description = "Not an operator key", body = ErrorBody)),
    security(("admin_key" = [])))]
fn delete_tenant() {}

/// A tenant's projects.
#[utoipa::path(get, path = "/admin/tenants/{tenant}/projects", tag = "control-plane",
    params(("tenant" = String, Path)),
    responses((status = 200, description = "A `list` of projects")),
    security(("admin_key" = [])))]
fn list_projects() {}

/// Creates a project (operators, the tenant's admins; limits within the tenant's).
#[utoipa::path(post, path = "/admin/tenants/{tenant}/projects", tag = "control-plane",
    params(("tenant" = String, Path)), request_body = Project,
    responses((status = 201, description = "The project", body = Project),
        (status = 403, description = "Another tenant, or limits above the tenant's", body = ErrorBody),
        (status = 409, description = "It exists, or the tenant is deleted", body = ErrorBody)),
    security(("admin_key" = [])))]
fn create_project() {}

/// One project.
#[utoipa::path(get, path = "/admin/tenants/{tenant}/projects/{project}", tag = "control-plane",
    params(("tenant" = String, Path), ("project" = String, Path)),
    responses((status = 200, description = "The project", body = Project)),
    security(("admin_key" = [])))]
fn get_project() {}

/// Changes a project: a JSON merge patch.
#[utoipa::path(patch, path = "/admin/tenants/{tenant}/projects/{project}", tag = "control-plane",
    params(("tenant" = String, Path), ("project" = String, Path)), request_body = Object,
    responses((status = 200, description = "The project after", body = Project)),
    security(("admin_key" = [])))]
fn update_project() {}

/// Deletes a project: disabled, its keys stop; its usage and audit rows stay.
#[utoipa::path(delete, path = "/admin/tenants/{tenant}/projects/{project}", tag = "control-plane",
    params(("tenant" = String, Path), ("project" = String, Path)),
    responses((status = 200, description = "The project, disabled", body = Project)),
    security(("admin_key" = [])))]
fn delete_project() {}

/// A tenant's keys (never their secrets or digests).
#[utoipa::path(get, path = "/admin/tenants/{tenant}/keys", tag = "control-plane",
    params(("tenant" = String, Path)),
    responses((status = 200, description = "A `list` of keys")),
    security(("admin_key" = [])))]
fn list_tenant_keys() {}

/// Issues an inference key (`project`, `models`, `limits`, `expires_in_secs` or
/// `expires_at_ms`, `name`) or a tenant-admin key (`"role": "tenant_admin"`). The response's
/// `key` is the plaintext, shown once.
#[utoipa::path(post, path = "/admin/tenants/{tenant}/keys", tag = "control-plane",
    params(("tenant" = String, Path)), request_body = Object,
    responses((status = 201, description = "The key, with `key` shown once", body = Key)),
    security(("admin_key" = [])))]
fn issue_tenant_key() {}

/// Operator and auditor keys (operators, auditors).
#[utoipa::path(get, path = "/admin/keys", tag = "control-plane",
    responses((status = 200, description = "A `list` of keys")),
    security(("admin_key" = [])))]
fn list_admin_keys() {}

/// Issues an operator or auditor key (operators): `{"role": "operator" | "auditor"}`.
#[utoipa::path(post, path = "/admin/keys", tag = "control-plane",
    request_body = Object,
    responses((status = 201, description = "The key, with `key` shown once", body = Key)),
    security(("admin_key" = [])))]
fn issue_admin_key() {}

/// One key.
#[utoipa::path(get, path = "/admin/keys/{key}", tag = "control-plane",
    params(("key" = String, Path)),
    responses((status = 200, description = "The key", body = Key)),
    security(("admin_key" = [])))]
fn get_key() {}

/// Revokes a key: refused on every replica within its poll interval; 503 (nothing lost) when
/// the store is unreachable.
#[utoipa::path(delete, path = "/admin/keys/{key}", tag = "control-plane",
    params(("key" = String, Path)),
    responses((status = 200, description = "The key, revoked", body = Key),
        (status = 503, description = "The store is unreachable: not revoked", body = ErrorBody)),
    security(("admin_key" = [])))]
fn revoke_key() {}

/// Rotates a key: `{"overlap_secs": N}`; a new key of the same scope (shown once), the old one
/// valid N more seconds (at most 30 days).
#[utoipa::path(post, path = "/admin/keys/{key}/rotate", tag = "control-plane",
    params(("key" = String, Path)), request_body = Object,
    responses((status = 201, description = "The new key, with `key` shown once", body = Key),
        (status = 409, description = "Revoked or expired", body = ErrorBody)),
    security(("admin_key" = [])))]
fn rotate_key() {}

/// Every model's price versions (`model` to filter).
#[utoipa::path(get, path = "/admin/prices", tag = "control-plane",
    responses((status = 200, description = "A `list` of prices", body = [Price])),
    security(("admin_key" = [])))]
fn list_prices() {}

/// Sets a model's price from `effective_from_ms` (default now, never in the past): per million
/// input, cached-input and output tokens in integer minor units of `[control_plane] currency`,
/// with a batch discount (operators). Records keep the version they were billed at.
#[utoipa::path(post, path = "/admin/prices", tag = "control-plane",
    request_body = Price,
    responses((status = 201, description = "The price version", body = Price),
        (status = 400, description = "Invalid field, another currency, or a date in the past", body = ErrorBody),
        (status = 409, description = "That version exists", body = ErrorBody)),
    security(("admin_key" = [])))]
fn set_price() {}

/// Grants (`tenant` to filter).
#[utoipa::path(get, path = "/admin/grants", tag = "control-plane",
    responses((status = 200, description = "A `list` of grants", body = [Grant])),
    security(("admin_key" = [])))]
fn list_grants() {}

/// Creates a grant (operators): `tenant`, optional `project`, `unit` (`tokens` or `money`),
/// `amount` (tokens, or minor units), `starts_at_ms` (default now), `expires_at_ms`.
#[utoipa::path(post, path = "/admin/grants", tag = "control-plane",
    request_body = Grant,
    responses((status = 201, description = "The grant", body = Grant)),
    security(("admin_key" = [])))]
fn create_grant() {}

/// Budgets (`tenant` to filter).
#[utoipa::path(get, path = "/admin/budgets", tag = "control-plane",
    responses((status = 200, description = "A `list` of budgets", body = [Budget])),
    security(("admin_key" = [])))]
fn list_budgets() {}

/// Creates a budget in money per `day` or `month` (operators).
#[utoipa::path(post, path = "/admin/budgets", tag = "control-plane",
    request_body = Budget,
    responses((status = 201, description = "The budget", body = Budget)),
    security(("admin_key" = [])))]
fn create_budget() {}

/// What each grant, and each budget per period, has used (`tenant`, `format=json|csv`).
#[utoipa::path(get, path = "/admin/allowances", tag = "control-plane",
    responses((status = 200, description = "A `list` of lines: amount, used, remaining")),
    security(("admin_key" = [])))]
fn allowances() {}

/// The audit log: every write with who, what, before, after, when and from where (`tenant`,
/// `after`, `limit`, `format=json|csv`). A tenant-admin reads its own tenant's entries.
#[utoipa::path(get, path = "/admin/audit", tag = "control-plane",
    responses((status = 200, description = "A `list` of entries", body = [AuditEntry])),
    security(("admin_key" = [])))]
fn audit() {}

/// Usage from the ledger, grouped (`from`, `to`, `tenant`, `project`,
/// `group_by=day|model|project`).
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

/// The LoRA adapters the caller may read: configured (`origin: file`) and registered
/// (`origin: registry`), with how many replicas here hold each loaded.
#[utoipa::path(get, path = "/admin/adapters", tag = "control-plane",
    responses((status = 200, description = "A `list` of adapters", body = [AdapterEntry])),
    security(("admin_key" = [])))]
fn list_adapters() {}

/// Registers a LoRA adapter (llama.cpp's GGUF adapter format): `multipart/form-data` with `id`,
/// `model`, `file` and (operators) `tenant` (absent: shared with every tenant; a tenant-admin's
/// adapter is its tenant's), or (operators) JSON `{"id", "model", "path", "tenant"?}` naming a
/// file inside `[adapter_registry] directory`. The file is read whole and checked against the
/// model before it is stored: a misfit is a 400 naming the tensor.
#[utoipa::path(post, path = "/admin/adapters", tag = "control-plane",
    responses((status = 201, description = "The adapter", body = AdapterEntry),
        (status = 400, description = "Not an adapter for the model, or a bad field", body = ErrorBody),
        (status = 403, description = "Another tenant, sharing or a path as a tenant-admin", body = ErrorBody),
        (status = 409, description = "The id is taken", body = ErrorBody),
        (status = 413, description = "Over `[adapter_registry] max_file_bytes`", body = ErrorBody)),
    security(("admin_key" = [])))]
fn register_adapter() {}

/// One adapter (another tenant's is not found).
#[utoipa::path(get, path = "/admin/adapters/{adapter}", tag = "control-plane",
    params(("adapter" = String, Path, description = "The adapter's id")),
    responses((status = 200, description = "The adapter", body = AdapterEntry),
        (status = 404, description = "No such adapter for the caller", body = ErrorBody)),
    security(("admin_key" = [])))]
fn get_adapter() {}

/// Deletes a registered adapter: no request names it from now on, and every engine that holds
/// it unloads it.
#[utoipa::path(delete, path = "/admin/adapters/{adapter}", tag = "control-plane",
    params(("adapter" = String, Path, description = "The adapter's id")),
    responses((status = 200, description = "`{\"id\", \"object\": \"adapter\", \"deleted\": true}`"),
        (status = 404, description = "No such adapter for the caller", body = ErrorBody),
        (status = 409, description = "Declared in the configuration file", body = ErrorBody)),
    security(("admin_key" = [])))]
fn delete_adapter() {}

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
    paths(chat_completions, completions, embeddings, create_response, retrieve_response,
        response_input_items, delete_response, upload_file, list_files, retrieve_file, delete_file, file_content,
        create_batch, list_batches, retrieve_batch, cancel_batch, messages, count_message_tokens, list_models, retrieve_model, load, admin_tenants,
        admin_usage, admin_usage_records, admin_pools, create_tenant, get_tenant, update_tenant,
        delete_tenant, list_projects, create_project, get_project, update_project, delete_project,
        list_tenant_keys, issue_tenant_key, list_admin_keys, issue_admin_key, get_key, revoke_key,
        rotate_key, audit, list_prices, set_price, list_grants, create_grant, list_budgets,
        create_budget, allowances, list_adapters, register_adapter, get_adapter, delete_adapter, health, ready, metrics, version, openapi),
    components(schemas(ErrorBody, AnthropicErrorBody, Tenant, Project, Key, Limits, AuditEntry, Role, Price, Grant, Budget, AdapterEntry, AdapterSource)),
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

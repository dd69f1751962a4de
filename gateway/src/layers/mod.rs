//! The per-request concerns, one tower layer each. They are composed, in the order of the
//! request path (docs/architecture.md, "The path of a request today"), in one function:
//! `routes::router`.
//! Outermost first:
//!
//! 1. [`client_request_id`]: a client's own id kept apart (never the gateway's), then the
//!    gateway's request id (`x-request-id`, tower-http's layers, made and echoed);
//! 2. [`trace`]: the request's span and its access-log line;
//! 3. [`anthropic_errors`]: on `/v1/messages...`, every error rewritten into Anthropic's shape;
//! 4. [`cors`]: cross-origin preflights and headers, when configured;
//! 5. [`body_limit`]: the request-body size limit (413);
//! 6. [`timeout`]: the time to the response head (504);
//! 7. [`authentication`]: the caller's key, resolved to a tenant (401/403);
//! 8. [`request_metrics`]: the request counter by tenant, model and status;
//! 9. [`rate_limit_headers`]: OpenAI's `x-ratelimit-*` headers.
//!
//! Quota admission is no layer: it needs the request's size, known only once its prompts are
//! rendered, so the handlers of the routes it weighs call it in their pipeline
//! (`routes::pipeline`). The layers tell each other what they learned through the typed
//! extensions of [`crate::extensions`]; each header is written by one layer, each thing
//! counted by one.

pub mod anthropic_errors;
pub mod around;
pub mod authentication;
pub mod body_limit;
pub mod client_request_id;
pub mod cors;
pub mod rate_limit_headers;
pub mod request_metrics;
pub mod timeout;
pub mod trace;

/// A server state and requests for testing one layer alone, with a stub inner service.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use axum::response::Response;
    use policies::{ApiKey, TenantId};

    use crate::config::{GatewayConfig, TenantConfig};
    use crate::directory::Directory;
    use crate::extensions::Caller;
    use crate::models::ModelRegistry;
    use crate::state::{AppState, Limits};

    /// The one tenant's id and key.
    pub const TENANT: &str = "acme";
    pub const TENANT_KEY: &str = "sk-layer-test-tenant-0123456789abcdef";
    /// An admin key, and a key nobody has.
    pub const ADMIN_KEY: &str = "sk-layer-test-admin-0123456789abcdef";
    pub const OTHER_KEY: &str = "sk-layer-test-nobody-0123456789abcdef";

    /// A state with one tenant, shaped by `limits`, and no model.
    pub fn state(limits: impl FnOnce(&mut TenantConfig)) -> AppState {
        state_with_edge(limits, |_| {})
    }

    /// [`state`], with the edge's limits shaped by `edge`.
    pub fn state_with_edge(
        limits: impl FnOnce(&mut TenantConfig),
        edge: impl FnOnce(&mut Limits),
    ) -> AppState {
        let digest = |key: &str| ApiKey::from_plaintext(key).digest().to_string();
        let mut tenant =
            TenantConfig::unlimited(TenantId::new(TENANT).unwrap(), vec![digest(TENANT_KEY)]);
        limits(&mut tenant);
        let config = GatewayConfig {
            tenants: vec![tenant],
            admin_keys: vec![digest(ADMIN_KEY)],
            ..GatewayConfig::default()
        };
        let mut edge_limits = Limits {
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(60),
            cors_origins: Vec::new(),
            max_prompts_per_request: 64,
            max_prompt_tokens_per_request: 131_072,
            admin_requests_per_minute: 600,
            batches: Default::default(),
            console: Default::default(),
            tls: false,
            adapter_registry: Default::default(),
        };
        edge(&mut edge_limits);
        AppState::new(
            edge_limits,
            Arc::new(ModelRegistry::default()),
            Directory::from_config(&config).unwrap(),
            None,
            Arc::new(policies::QuotaBook::default()),
            true,
        )
    }

    /// The tenant as authentication would have resolved it.
    pub fn caller(state: &AppState) -> Caller {
        let resolved = state
            .directory()
            .resolve(&ApiKey::from_plaintext(TENANT_KEY))
            .unwrap();
        Caller::new(resolved)
    }

    /// A request with `key` as its bearer token, if any.
    pub fn request(key: Option<&str>) -> Request<Body> {
        let mut builder = Request::builder().uri("/v1/models");
        if let Some(key) = key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        builder.body(Body::empty()).unwrap()
    }

    /// A response's body as text.
    pub async fn body_text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}

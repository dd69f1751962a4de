//! What the layers and handlers tell each other about one request, as typed request and response
//! extensions. Defined here, below every layer and handler, so that no two of them import each
//! other: each layer reads what an outer one learned and leaves what it learned for the next.
//!
//! | extension | written by | read by |
//! |---|---|---|
//! | [`ClientRequestId`] (request) | client request id | trace span, usage accounts |
//! | [`Caller`] (request) | authentication | request metrics, rate-limit headers, handlers |
//! | [`control_plane::Actor`] (request) | admin authentication | admin handlers |
//! | [`RateLimitSnapshot`] (response) | the admitted routes' handlers, a 429 | rate-limit headers |
//! | [`ServedModel`] (response) | the admitted routes' handlers | request metrics |
//! | [`AccessLogWritten`] (response) | the generation and embedding handlers | access log |
//! | [`Polled`] (response) | polled endpoints | access log |
//!
//! Nothing here goes from a layer to a handler but what a layer produces (the caller, the
//! client's request id): a request's own stages (validate, admit, route, respond, settle) pass
//! their values by call in the handler (`routes::pipeline`).

use std::sync::Arc;

use policies::{KeyId, RateLimitStatus, ResolvedKey, TenantSpec};

/// Who is calling. Never holds the key itself, only its non-secret id.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The tenant the key belongs to (a snapshot: a reload does not change a running request;
    /// shared, so that passing the caller on copies nothing).
    pub tenant: Arc<TenantSpec>,
    /// The key's non-secret id.
    pub key_id: KeyId,
    /// The project inside the tenant the key belongs to.
    pub project: Option<Arc<str>>,
    /// Everything the key grants: the narrower quota scopes and model lists it is held to.
    pub grant: ResolvedKey,
}

impl Caller {
    /// The caller a resolved key makes.
    pub fn new(grant: ResolvedKey) -> Self {
        Self {
            tenant: grant.tenant.clone(),
            key_id: grant.key_id.clone(),
            project: grant.project.clone(),
            grant,
        }
    }

    /// Whether the key may use `model` (its tenant's, project's and own lists all allow it).
    pub fn may_use(&self, model: &str) -> bool {
        self.grant.may_use(model)
    }
}

/// The id a client sent with its request (`x-client-request-id` or `x-request-id`), when usable:
/// its own reference, stored beside the gateway's id, never in its place.
#[derive(Debug, Clone)]
pub struct ClientRequestId(pub Arc<str>);

/// The tenant's limits as of this request, for the `x-ratelimit-*` headers. A response that
/// carries none gets the tenant's current state.
#[derive(Debug, Clone)]
pub struct RateLimitSnapshot(pub RateLimitStatus);

/// The configured model a response served, for the request counter's `model` label. Absent for
/// routes without a model, and for requests naming a model that is not configured (client-chosen
/// strings must not become label values).
#[derive(Debug, Clone)]
pub struct ServedModel(pub String);

/// Marks a response whose access-log line is written when its generation ends (by its usage
/// account, with tokens and timings), so the generic line is skipped.
#[derive(Debug, Clone, Copy)]
pub struct AccessLogWritten;

/// Marks a response whose access-log line goes at debug level: polled endpoints (`/load`, asked
/// by every gateway every few seconds) would drown the requests.
#[derive(Debug, Clone, Copy)]
pub struct Polled;

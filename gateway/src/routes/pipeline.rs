//! The stages a route that admission weighs (the two generation routes and `/v1/embeddings`)
//! calls in its handler, in order: [`read`] the request once (the caller and the ids the outer
//! layers left, the body, the model it names), validate and size it (the route's own), [`admit`]
//! it against its tenant's quota, then route, respond and settle (the route's own again). The
//! response is [`Incoming::label`]led with the model it served, for the request counter (only a
//! configured model's id: client-chosen strings must not become label values), and
//! [`with_limits`] carries the limits as admission saw them, for the `x-ratelimit-*` headers.

use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use policies::{Admission, Admitting, Refusal, TenantSpec};
use tower_http::request_id::RequestId;

use crate::error::ApiError;
use crate::extensions::{Caller, ClientRequestId, RateLimitSnapshot, ServedModel};
use crate::models::ModelState;
use crate::openai::json::{model_name, read_body};
use crate::state::AppState;
use crate::store_sync::AllowanceHold;
use control_plane::Usage;

/// What admitting a request costs, in tokens: known once its prompts (or inputs) are rendered
/// and sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCost {
    /// Prompt tokens over every prompt of the request.
    pub prompt_tokens: u64,
    /// Prompt tokens plus `max_tokens` of every prompt: what the tokens-per-minute limit and the
    /// router reserve (`routing::RouteRequest::reserved_tokens`).
    pub reserved_tokens: u64,
    /// The request named no `max_tokens`: with less than `reserved_tokens` left of the day it
    /// may be cut to what is left, down to this many (its prompt and a token per choice).
    pub shortenable_to: Option<u64>,
}

impl RequestCost {
    /// What admission is asked for.
    pub fn ask(&self) -> policies::Ask {
        let ask = policies::Ask::new(self.prompt_tokens, self.reserved_tokens);
        match self.shortenable_to {
            Some(least) => ask.shortenable_to(least),
            None => ask,
        }
    }
}

/// A request as the handler starts it: who asks, under which ids, with which body.
pub struct Incoming {
    /// The caller authentication found.
    pub caller: Caller,
    /// The gateway's id of the request (`x-request-id`).
    pub request_id: String,
    /// The client's own id for it, when usable.
    pub client_request_id: Option<ClientRequestId>,
    /// The body, read once.
    pub body: Bytes,
    /// The configured model the body names, and its state.
    named: Option<(String, ModelState)>,
    /// The batch this request is a line of (its `request_id` is then the line's `custom_id`).
    pub batch: Option<String>,
}

impl Incoming {
    /// A request the gateway makes itself for `caller`: a line `request_id` of batch `batch`,
    /// with `body`.
    pub fn internal(
        state: &AppState,
        caller: Caller,
        request_id: String,
        body: Bytes,
        batch: String,
    ) -> Result<Self, ApiError> {
        let named = named_model(state, &body)?;
        Ok(Self {
            caller,
            request_id,
            client_request_id: None,
            body,
            named,
            batch: Some(batch),
        })
    }

    /// The state of the model the body names, if it is configured.
    pub fn model_state(&self) -> Option<ModelState> {
        self.named.as_ref().map(|(_, state)| state.clone())
    }

    /// `response`, labelled with the configured model the request named.
    pub fn label(&self, mut response: Response) -> Response {
        if let Some((model, _)) = &self.named {
            let served = ServedModel(model.clone());
            response.extensions_mut().insert(served);
        }
        response
    }
}

/// Reads the request: the caller and ids from its extensions, its body (once, within the size
/// limit), and the model the body names.
pub async fn read(state: &AppState, request: Request) -> Result<Incoming, ApiError> {
    let (parts, body) = request.into_parts();
    let caller = parts
        .extensions
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ApiError::internal("an admitted route runs after authentication"))?;
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default()
        .to_string();
    let client_request_id = parts.extensions.get::<ClientRequestId>().cloned();
    let body = read_body(body, state.limits.max_body_bytes).await?;
    let named = named_model(state, &body)?;
    Ok(Incoming {
        caller,
        request_id,
        client_request_id,
        body,
        named,
        batch: None,
    })
}

/// The configured model `body` names, and its state: a model's, or an adapter's (named as
/// the request names it, with its model's state; who may see it is checked when the request
/// is prepared).
fn named_model(state: &AppState, body: &[u8]) -> Result<Option<(String, ModelState)>, ApiError> {
    Ok(model_name(body)?.and_then(|m| {
        let model = match state.directory().adapters.resolve(&m) {
            Some(adapter) => state.models.get(&adapter.model),
            None => state.models.get(&m),
        };
        model.map(|model| (m.into_owned(), model.clone()))
    }))
}

/// Admits a request of `caller`'s tenant costing `cost` against its quota (requests and tokens per
/// minute, concurrency, daily budget): the [`Admission`] holds the reservation and the
/// concurrency slot, is settled with the real token count when the work ends, and refunds
/// itself if dropped unused. Refused: a 429 (a 503 when a shared quota store is unavailable
/// and set to `fail_closed`). The in-process store decides at once; a shared one (Redis)
/// answers after a round trip.
///
/// A key of a project, or with limits of its own, is admitted against those scopes too, widest
/// first: the request needs room in every one, and a refusal by a narrower scope gives back
/// what the wider ones granted (the admissions are dropped unstarted).
///
/// A tenant or project with grants or budgets (in the control-plane store) then reserves the
/// request's most against them, in the store: tokens, and their cost at `model`'s price now
/// (the batch discount is settled, not reserved). A shortfall is a 429 `insufficient_quota`
/// naming the grant or budget.
pub async fn admit(
    state: &AppState,
    caller: &Caller,
    model: &str,
    cost: RequestCost,
) -> Result<(Admission, Option<AllowanceHold>), ApiError> {
    let admission = admit_quotas(state, caller, cost).await?;
    let hold = reserve_allowances(state, caller, model, cost).await?;
    Ok((admission, hold))
}

/// Reserves the request's most against the grants and budgets that apply, if any.
async fn reserve_allowances(
    state: &AppState,
    caller: &Caller,
    model: &str,
    cost: RequestCost,
) -> Result<Option<AllowanceHold>, ApiError> {
    let (Some(store), Some(snapshot)) = (state.store(), state.directory().snapshot.clone()) else {
        return Ok(None);
    };
    if !control_plane::any_allowance(&snapshot, &caller.tenant.id, caller.project.as_deref()) {
        return Ok(None);
    }
    let generated = cost.reserved_tokens.saturating_sub(cost.prompt_tokens);
    let micros = snapshot
        .price_at(model, control_plane::now_ms())
        .map_or(0, |p| {
            p.cost_micros(cost.prompt_tokens, 0, generated, false)
        });
    let most = Usage {
        tokens: cost.reserved_tokens.min(i64::MAX as u64) as i64,
        micros,
    };
    let project = caller.project.as_deref().map(str::to_string);
    match store
        .reserve(snapshot, caller.tenant.id.clone(), project, most)
        .await?
    {
        Ok(hold) => Ok(hold),
        Err(shortfall) => {
            tracing::info!(reason = %shortfall.message, "request refused by an allowance");
            state
                .requests
                .count_rejection(&caller.tenant.id, "allowance");
            Err(ApiError::allowance_exhausted(&shortfall.message))
        }
    }
}

/// The request's quota admissions: its tenant's, and its project's and key's when they set
/// limits of their own.
async fn admit_quotas(
    state: &AppState,
    caller: &Caller,
    cost: RequestCost,
) -> Result<Admission, ApiError> {
    let mut admission = admit_scope(state, &caller.tenant, &caller.tenant, cost).await?;
    for scope in &caller.grant.scopes {
        let inner = admit_scope(state, &caller.tenant, scope, cost)
            .await
            .map_err(
                |e| match e.status == axum::http::StatusCode::TOO_MANY_REQUESTS {
                    true => ApiError {
                        message: format!("{} (the limit of `{}`)", e.message, scope.id),
                        ..e
                    },
                    false => e,
                },
            )?;
        admission.nest(inner);
    }
    Ok(admission)
}

/// Admits the request against one scope's quota: the tenant's, or a narrower one inside it.
async fn admit_scope(
    state: &AppState,
    tenant: &TenantSpec,
    scope: &TenantSpec,
    cost: RequestCost,
) -> Result<Admission, ApiError> {
    let span = tracing::info_span!(
        "admission",
        scope = scope.id.as_str(),
        prompt_tokens = cost.prompt_tokens,
        reserved_tokens = cost.reserved_tokens
    );
    let admitted = match span.in_scope(|| state.quotas.admit(scope, cost.ask())) {
        Admitting::Decided(admitted) => admitted,
        Admitting::Pending(admitting) => tracing::Instrument::instrument(admitting, span).await,
    };
    match admitted {
        Ok(admission) => Ok(admission),
        Err(Refusal::Limited(rejection)) => {
            let reason = rejection.reason.as_str();
            tracing::info!(
                reason,
                scope = scope.id.as_str(),
                "request refused by quota"
            );
            state.requests.count_rejection(&tenant.id, reason);
            Err(ApiError::rate_limited(&rejection))
        }
        Err(Refusal::Unavailable { retry_after }) => {
            tracing::warn!("request refused: the quota store is unavailable (fail_closed)");
            let reason = "quota_store_unavailable";
            state.requests.count_rejection(&tenant.id, reason);
            Err(ApiError::quota_store_unavailable(retry_after))
        }
    }
}

/// `response` with the tenant's limits as admission saw them, unless it carries newer ones.
pub fn with_limits(mut response: Response, admitted: RateLimitSnapshot) -> Response {
    if response.extensions().get::<RateLimitSnapshot>().is_none() {
        response.extensions_mut().insert(admitted);
    }
    response
}

//! The generation handlers: one pipeline, read in order: read the request, validate and size it,
//! admit it, route it to the model's replicas, respond with one JSON body or an SSE stream;
//! the usage account settles when the generation ends.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use policies::Admission;

use crate::store_sync::AllowanceHold;
use routing::Requester;

use super::prepare::{prepare_generation, PreparedGeneration};
use super::respond::{sse_events, sse_response, whole_response, BestOf, Relay};
use crate::accounting::{BilledPrompt, RequestAccount};
use crate::error::ApiError;
use crate::extensions::{AccessLogWritten, RateLimitSnapshot};
use crate::openai::response::Endpoint;
use crate::openai::response::ResponseMeta;
use crate::openai::tools::ToolSpec;
use crate::routes::pipeline::{self, Incoming};
use crate::state::AppState;
use ledger::Api;
use std::sync::Arc;

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(state): State<AppState>, request: Request) -> Response {
    generate(&state, Endpoint::Chat, request).await
}

/// `POST /v1/completions`.
pub async fn completions(State(state): State<AppState>, request: Request) -> Response {
    generate(&state, Endpoint::Completions, request).await
}

/// The pipeline of both endpoints.
async fn generate(state: &AppState, endpoint: Endpoint, request: Request) -> Response {
    let incoming = match pipeline::read(state, request).await {
        Ok(incoming) => incoming,
        Err(error) => return error.into_response(),
    };
    let response = validate_admit_serve(state, endpoint, &incoming).await;
    incoming.label(response.unwrap_or_else(IntoResponse::into_response))
}

/// A request the gateway makes itself (a batch's line) to `endpoint`, through the whole
/// pipeline: the endpoint's answer (any status), never streamed.
pub async fn serve_internal(state: &AppState, endpoint: Endpoint, incoming: &Incoming) -> Response {
    validate_admit_serve(state, endpoint, incoming)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Validates (400, 403, 404, 503), admits (429) and serves.
async fn validate_admit_serve(
    state: &AppState,
    endpoint: Endpoint,
    incoming: &Incoming,
) -> Result<Response, ApiError> {
    let caller = &incoming.caller;
    let model = incoming.model_state();
    let (prepared, cost) = prepare_generation(state, endpoint, caller, &incoming.body, model)?;
    let (admission, hold) = pipeline::admit(state, caller, &prepared.served_model, cost).await?;
    let limits = RateLimitSnapshot(admission.status.clone());
    let response = serve(state, incoming, prepared, admission, hold).await?;
    Ok(pipeline::with_limits(response, limits))
}

/// A generation under way: admitted, routed, its usage account riding in the relay; what the
/// endpoint needs to shape its answer.
pub struct Started {
    /// The response's identity.
    pub meta: ResponseMeta,
    /// The engine's events, accounted.
    pub relay: Relay,
    /// The functions the model may call, if offered.
    pub tools: Option<Arc<ToolSpec>>,
    /// The limits as admission saw them (for the `x-ratelimit-*` headers).
    pub limits: RateLimitSnapshot,
    /// The prompt's tokens as admission counted them.
    pub prompt_tokens: u64,
}

/// Runs a chat request (a chat-completions body: the Responses and Messages APIs translate
/// theirs into one) through the whole pipeline up to its first event: validated, sized,
/// admitted, routed. `api` names the API it came through, for the ledger.
pub async fn start_chat(
    state: &AppState,
    incoming: &Incoming,
    chat_body: &[u8],
    api: Api,
) -> Result<Started, ApiError> {
    let caller = &incoming.caller;
    let model = incoming.model_state();
    let (prepared, cost) = prepare_generation(state, Endpoint::Chat, caller, chat_body, model)?;
    let (admission, hold) = pipeline::admit(state, caller, &prepared.served_model, cost).await?;
    let limits = RateLimitSnapshot(admission.status.clone());
    let (prepared, relay) = submit(state, incoming, prepared, admission, hold, api).await?;
    Ok(Started {
        meta: prepared.meta,
        relay,
        tools: prepared.tools,
        limits,
        prompt_tokens: cost.prompt_tokens,
    })
}

/// Routes the admitted request to the model's replicas and answers with what they generate;
/// its usage account settles (quota, metrics, access log, ledger) when the generation ends.
async fn serve(
    state: &AppState,
    incoming: &Incoming,
    prepared: PreparedGeneration,
    admission: Admission,
    hold: Option<AllowanceHold>,
) -> Result<Response, ApiError> {
    let api = match prepared.meta.endpoint {
        Endpoint::Chat => Api::ChatCompletions,
        Endpoint::Completions => Api::Completions,
    };
    let (prepared, relay) = submit(state, incoming, prepared, admission, hold, api).await?;
    // From here the account writes the access-log line when the generation ends.
    let mut response = if prepared.stream {
        sse_response(sse_events(
            prepared.meta,
            relay,
            prepared.include_usage,
            prepared.tools,
        ))
    } else {
        let best_of = BestOf {
            generated: prepared.choices.per_prompt(),
            returned: prepared.returned_per_prompt,
        };
        whole_response(
            prepared.meta,
            relay,
            prepared.tools,
            prepared.logprobs,
            best_of,
        )
        .await
        .unwrap_or_else(IntoResponse::into_response)
    };
    response.extensions_mut().insert(AccessLogWritten);
    Ok(response)
}

/// Submits every prompt of an admitted request; its events come back through a [`Relay`]
/// holding the request's usage account (what is left of `prepared` comes back with it).
async fn submit(
    state: &AppState,
    incoming: &Incoming,
    mut prepared: PreparedGeneration,
    admission: Admission,
    hold: Option<AllowanceHold>,
    api: Api,
) -> Result<(PreparedGeneration, Relay), ApiError> {
    if let Some(granted) = admission.shortened_to() {
        prepared.fit_to(granted);
    }
    let caller = &incoming.caller;
    let requester = Requester {
        tenant: caller.tenant.id.clone(),
        share: prepared.share,
        project_share: caller.grant.project_share.clone(),
        tier: caller.tenant.tier.clone(),
        traceparent: crate::telemetry::traceparent(&tracing::Span::current()),
        cache_scope: prepared.cache_scope.clone(),
    };
    // Each prompt as admission billed it (once, whatever its number of choices).
    let billed: Vec<BilledPrompt> = prepared
        .choices
        .one_per_prompt(&prepared.requests)
        .map(|r| BilledPrompt {
            tokens: r.prompt.tokens() as u64,
            estimated: r.prompt.is_estimate(),
        })
        .collect();
    // All prompts or none: a prompt that does not fit fails the whole request (and, with
    // nothing generated, it is not billed: the admission is dropped and refunded).
    // Waits (by priority class and fair share) while every replica is saturated, if the
    // model's pools let requests wait.
    let requests = std::mem::take(&mut prepared.requests);
    let streams = prepared
        .engine
        .submit_all_waiting(&requester, requests)
        .await?;
    let account = RequestAccount::new(
        state,
        caller,
        &incoming.request_id,
        incoming.client_request_id.as_ref(),
        &prepared.served_model,
        &billed,
        admission,
    )
    .billed_as(requester.share.priority)
    .holding(hold)
    .with_adapter(prepared.adapter.clone());
    // A batch's line is recorded as such, keyed by the batch and its `custom_id`.
    let account = match &incoming.batch {
        Some(batch) => account.through(Api::Batches).in_batch(batch),
        None => account.through(api),
    };
    let relay = Relay::new(streams, prepared.choices, billed, account);
    Ok((prepared, relay))
}

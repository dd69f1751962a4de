//! The generation handler: submits the prepared, admitted request to the model's router and
//! answers with one JSON body or an SSE stream.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use policies::Admission;
use routing::Requester;
use tower_http::request_id::RequestId;

use super::preamble::PreparedGeneration;
use super::respond::{sse_events, sse_response, whole_response, BestOf, Relay};
use crate::accounting::{BilledPrompt, RequestAccount};
use crate::error::ApiError;
use crate::extensions::{AccessLogWritten, Caller, ClientRequestId, Handoff};
use crate::state::AppState;

/// `POST /v1/chat/completions` and `POST /v1/completions`, after the preamble and admission.
pub async fn generate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request_id): Extension<RequestId>,
    client_request_id: Option<Extension<ClientRequestId>>,
    Extension(prepared): Extension<Handoff<PreparedGeneration>>,
    Extension(admission): Extension<Handoff<Admission>>,
) -> Result<Response, ApiError> {
    let (Some(mut prepared), Some(admission)) = (prepared.take(), admission.take()) else {
        return Err(ApiError::internal("the request was handed on twice"));
    };
    if let Some(granted) = admission.shortened_to() {
        prepared.fit_to(granted);
    }
    let requester = Requester {
        tenant: caller.tenant.id.clone(),
        share: prepared.share,
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
    let streams = prepared
        .engine
        .submit_all_waiting(&requester, prepared.requests)
        .await?;
    let request_id = request_id.header_value().to_str().unwrap_or("");
    let account = RequestAccount::new(
        &state,
        &caller,
        request_id,
        client_request_id.as_deref(),
        &prepared.meta.model,
        &billed,
        admission,
    );
    let relay = Relay::new(streams, prepared.choices, billed, account);
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

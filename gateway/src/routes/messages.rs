//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API over the
//! chat pipeline. The request is translated into a chat-completions body
//! ([`crate::anthropic::request`]), then validated, admitted, routed and accounted exactly as a
//! chat request (its ledger record says `api = messages`); the answer is shaped as Anthropic's
//! message or its stream of named events. Errors leave in Anthropic's shape
//! (`layers::anthropic_errors`).

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::generation::handlers::{start_chat, Started};
use super::generation::one_choice::{OneChoice, Piece};
use super::generation::prepare::prepare_generation;
use super::generation::respond::{sse_response, SseWriter};
use super::pipeline::{self, Incoming};
use crate::anthropic::request::MessagesRequest;
use crate::anthropic::response::{events, MessageMeta};
use crate::error::ApiError;
use crate::extensions::AccessLogWritten;
use crate::openai::json::parse;
use crate::openai::response::{ChoiceEnd, Endpoint};
use crate::state::AppState;

/// `POST /v1/messages`.
pub async fn create(State(state): State<AppState>, request: Request) -> Response {
    let incoming = match pipeline::read(&state, request).await {
        Ok(incoming) => incoming,
        Err(error) => return error.into_response(),
    };
    let response = serve(&state, &incoming).await;
    incoming.label(response.unwrap_or_else(IntoResponse::into_response))
}

async fn serve(state: &AppState, incoming: &Incoming) -> Result<Response, ApiError> {
    let request: MessagesRequest = parse(&incoming.body)?;
    let chat = serde_json::to_vec(&request.to_chat(false)?).expect("JSON serialises");
    let started = start_chat(state, incoming, &chat, ledger::Api::Messages).await?;
    let limits = started.limits.clone();
    let meta = MessageMeta::new(&started.meta.model);
    let mut response = match request.streamed() {
        true => stream(meta, started),
        false => whole(meta, started).await?,
    };
    response.extensions_mut().insert(AccessLogWritten);
    Ok(pipeline::with_limits(response, limits))
}

/// The message, whole.
async fn whole(meta: MessageMeta, started: Started) -> Result<Response, ApiError> {
    let model = started.meta.model.clone();
    let answer = OneChoice::new(started.relay, started.tools)
        .whole()
        .await
        .map_err(|failure| failure.to_error(&model))?;
    let body = meta.message(
        &answer.text,
        answer.calls.as_deref(),
        answer.end,
        &answer.usage,
    );
    Ok(Json(body).into_response())
}

/// The message as Anthropic's stream: `message_start`, a content block per text or call
/// (`content_block_start`, its deltas, `content_block_stop`), `message_delta` with the stop
/// reason and usage, `message_stop`; a failure mid-stream is an `error` event.
fn stream(meta: MessageMeta, started: Started) -> Response {
    let model = started.meta.model.clone();
    let prompt_tokens = started.prompt_tokens;
    let mut answer = OneChoice::new(started.relay, started.tools);
    sse_response(async_stream::stream! {
        let mut sse = SseWriter::new();
        sse.named("message_start", &meta.start_event(prompt_tokens));
        sse.named("ping", &json!({"type": "ping"}));
        if let Some(frame) = sse.take() {
            yield frame;
        }
        // The index of the next block, and whether a text block is open.
        let mut index = 0;
        let mut text_open = false;
        let mut end = ChoiceEnd::Engine(engine_api::FinishReason::Stop);
        let failure = loop {
            match answer.next().await {
                Ok(Some(Piece::Text(text))) => {
                    if !text_open {
                        sse.named("content_block_start", &events::text_start(index));
                        text_open = true;
                    }
                    sse.named("content_block_delta", &events::text_delta(index, &text));
                }
                Ok(Some(Piece::Calls(calls))) => {
                    if text_open {
                        sse.named("content_block_stop", &events::block_stop(index));
                        text_open = false;
                        index += 1;
                    }
                    for call in &calls {
                        sse.named("content_block_start", &events::tool_start(index, call));
                        sse.named("content_block_delta", &events::tool_input(index, call));
                        sse.named("content_block_stop", &events::block_stop(index));
                        index += 1;
                    }
                }
                Ok(Some(Piece::End(e))) => end = e,
                Ok(None) => break None,
                Err(failure) => break Some(failure),
            }
            if let Some(frame) = sse.take() {
                yield frame;
            }
        };
        match failure {
            Some(failure) => {
                let error = failure.to_error(&model);
                sse.named_text("error", &error.to_anthropic_json());
            }
            None => {
                if text_open {
                    sse.named("content_block_stop", &events::block_stop(index));
                }
                // Committed to the ledger before the last event.
                let usage = answer.complete().await;
                sse.named("message_delta", &events::message_delta(end, &usage));
                sse.named("message_stop", &events::message_stop());
            }
        }
        if let Some(frame) = sse.take() {
            yield frame;
        }
    })
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens as the model's template and tokeniser
/// make them (tools included); nothing is generated, admitted or billed. A remote model's count
/// is the gateway's estimate.
pub async fn count_tokens(State(state): State<AppState>, request: Request) -> Response {
    let incoming = match pipeline::read(&state, request).await {
        Ok(incoming) => incoming,
        Err(error) => return error.into_response(),
    };
    let counted = (|| {
        let request: MessagesRequest = parse(&incoming.body)?;
        let chat = serde_json::to_vec(&request.to_chat(true)?).expect("JSON serialises");
        let (_, cost) = prepare_generation(
            &state,
            Endpoint::Chat,
            &incoming.caller,
            &chat,
            incoming.model_state(),
        )?;
        Ok::<_, ApiError>(Json(json!({"input_tokens": cost.prompt_tokens})).into_response())
    })();
    incoming.label(counted.unwrap_or_else(IntoResponse::into_response))
}

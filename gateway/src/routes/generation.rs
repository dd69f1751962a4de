//! `POST /v1/chat/completions` and `POST /v1/completions`: validate, submit to the engine,
//! answer with one JSON body or a stream of server-sent events.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use engines::{Engine, GenerationRequest, Prompt, SamplingParams, TokenEvent, TokenStream};
use futures::{Stream, StreamExt};
use serde_json::Value;
use std::sync::Arc;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openai::chat::ChatCompletionRequest;
use crate::openai::completions::{CompletionRequest, DEFAULT_MAX_TOKENS};
use crate::openai::json::from_value;
use crate::openai::params::{CommonParams, ValidParams};
use crate::openai::response::{ChoiceEvent, Endpoint, FinishedChoice, ResponseMeta, UsageBody};
use crate::openai::JsonBody;
use crate::state::{AppState, ModelState};
use policies::Admission;

pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let request: ChatCompletionRequest = from_value(&body)?;
    let engine = resolve_model(&state, &caller, &request.model)?;
    let params = from_value::<CommonParams>(&body)?.validate()?;
    let prompt = Prompt::Chat(request.conversation()?);
    // OpenAI's chat default: as many tokens as the context has room for.
    let context = engine.info().context_length;
    let default_max = move |prompt_tokens: usize| context.saturating_sub(prompt_tokens).max(1);
    let meta = ResponseMeta::new(Endpoint::Chat, &request.model);
    generate(
        &state,
        engine,
        meta,
        vec![prompt],
        params,
        default_max,
        &caller,
    )
    .await
}

pub async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = from_value(&body)?;
    let engine = resolve_model(&state, &caller, &request.model)?;
    let params = from_value::<CommonParams>(&body)?.validate()?;
    let prompts = request.prompts()?;
    let meta = ResponseMeta::new(Endpoint::Completions, &request.model);
    generate(
        &state,
        engine,
        meta,
        prompts,
        params,
        |_| DEFAULT_MAX_TOKENS,
        &caller,
    )
    .await
}

/// The engine serving `model`, if it exists, the caller may use it, and it is loaded.
fn resolve_model(
    state: &AppState,
    caller: &Caller,
    model: &str,
) -> Result<Arc<dyn Engine>, ApiError> {
    let model_state = state
        .models
        .get(model)
        .ok_or_else(|| ApiError::model_not_found(model))?;
    if !caller.tenant.models.allows(model) {
        return Err(ApiError::model_not_allowed(model));
    }
    match model_state {
        ModelState::Ready(engine) => Ok(engine),
        ModelState::Loading => Err(ApiError::model_not_ready(model)),
        ModelState::Failed(reason) => Err(ApiError::internal(format!(
            "The model `{model}` failed to load: {reason}"
        ))),
    }
}

/// Admits and submits a request. Each prompt is rendered and tokenised once, here: admission
/// needs its size, and the engine gets the ids. `default_max_tokens` gives the endpoint's
/// `max_tokens` for a prompt of that many tokens when the request names none.
async fn generate(
    state: &AppState,
    engine: Arc<dyn Engine>,
    meta: ResponseMeta,
    prompts: Vec<Prompt>,
    params: ValidParams,
    default_max_tokens: impl Fn(usize) -> usize,
    caller: &Caller,
) -> Result<Response, ApiError> {
    let mut prepared = Vec::with_capacity(prompts.len());
    for prompt in &prompts {
        let ids = engine.prompt_token_ids(prompt)?;
        let max_tokens = params
            .max_tokens
            .unwrap_or_else(|| default_max_tokens(ids.len()));
        prepared.push((ids, max_tokens));
    }
    let prompt_tokens: u64 = prepared.iter().map(|(ids, _)| ids.len() as u64).sum();
    let reserve = prompt_tokens + prepared.iter().map(|(_, max)| *max as u64).sum::<u64>();
    let admission = state
        .quotas
        .admit(&caller.tenant, prompt_tokens, reserve)
        .map_err(|rejection| {
            tracing::info!(
                reason = rejection.reason.as_str(),
                "request refused by quota"
            );
            ApiError::rate_limited(&rejection)
        })?;
    // All prompts or none: a prompt that does not fit fails the whole request.
    let requests = prepared
        .into_iter()
        .map(|(ids, max_tokens)| GenerationRequest {
            prompt: Prompt::Tokens(ids),
            params: SamplingParams {
                max_tokens,
                ..params.sampling.clone()
            },
            tenant: caller.tenant.id.to_string(),
            weight: caller.tenant.limits.weight,
        })
        .collect();
    let streams = engine.submit_all(requests)?;
    let limits = admission.status.clone();
    let mut response = if params.stream {
        Sse::new(sse_events(meta, streams, params.include_usage, admission)).into_response()
    } else {
        whole_response(meta, streams, admission).await?
    };
    crate::rate_limit_headers::insert(response.headers_mut(), &limits);
    Ok(response)
}

async fn whole_response(
    meta: ResponseMeta,
    streams: Vec<TokenStream>,
    admission: Admission,
) -> Result<Response, ApiError> {
    let outputs = futures::future::join_all(streams.into_iter().map(TokenStream::collect)).await;
    let mut usage = UsageBody::default();
    let mut choices = Vec::with_capacity(outputs.len());
    for output in outputs {
        let output = output.map_err(|e| ApiError::internal(format!("Generation failed: {e}")))?;
        log_completion(&meta, &output.completion);
        admission.record_completion_tokens(output.completion.usage.completion_tokens as u64);
        usage.add(output.completion.usage);
        choices.push(FinishedChoice {
            text: output.text,
            finish_reason: output.completion.finish_reason,
        });
    }
    Ok(Json(meta.response(&choices, usage)).into_response())
}

/// One line per finished choice, with the engine's own timing (inside the request's span, so it
/// carries the request id and tenant).
fn log_completion(meta: &ResponseMeta, completion: &engines::Completion) {
    let t = &completion.timing;
    tracing::info!(
        response_id = %meta.id,
        model = %meta.model,
        finish_reason = completion.finish_reason.as_str(),
        prompt_tokens = completion.usage.prompt_tokens,
        completion_tokens = completion.usage.completion_tokens,
        queue_ms = t.queue.as_secs_f64() * 1e3,
        prefill_ms = t.prefill.as_secs_f64() * 1e3,
        ttft_ms = t.time_to_first_token.as_secs_f64() * 1e3,
        decode_steps = t.decode_steps,
        "generation finished"
    );
}

fn data(value: &serde_json::Value) -> Result<Event, Infallible> {
    Ok(Event::default().data(value.to_string()))
}

/// The SSE body. It owns the token streams: when the client hangs up, hyper drops the body, the
/// receivers go with it, and the engine frees the sequences at its next step.
fn sse_events(
    meta: ResponseMeta,
    streams: Vec<TokenStream>,
    include_usage: bool,
    admission: Admission,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let choices = streams.len();
    let mut merged = futures::stream::select_all(streams.into_iter().enumerate().map(|(i, s)| {
        futures::stream::unfold(s, |mut s| async move { s.next().await.map(|e| (e, s)) })
            .map(move |e| (i, e))
            .boxed()
    }));
    async_stream::stream! {
        for i in 0..choices {
            if let Some(chunk) = meta.chunk(i, ChoiceEvent::Start, include_usage) {
                yield data(&chunk);
            }
        }
        let mut usage = UsageBody::default();
        let mut open = choices;
        let mut failure = None;
        while let Some((i, event)) = merged.next().await {
            if matches!(event, TokenEvent::Token { .. }) {
                // Counted as generated, so a client that hangs up is billed for what it got.
                admission.record_completion_tokens(1);
            }
            let chunk = match event {
                // One chunk per generated token, as vLLM streams, even when its text is empty (a
                // special token, or bytes held back until a character is complete): clients
                // and load generators count tokens by chunks.
                TokenEvent::Token { text, .. } => meta.chunk(i, ChoiceEvent::Text(&text), include_usage),
                TokenEvent::Finished(completion) => {
                    log_completion(&meta, &completion);
                    usage.add(completion.usage);
                    open -= 1;
                    meta.chunk(i, ChoiceEvent::Finish(completion.finish_reason), include_usage)
                }
                TokenEvent::Failed(reason) => {
                    failure = Some(reason);
                    break;
                }
            };
            if let Some(chunk) = chunk {
                yield data(&chunk);
            }
        }
        if failure.is_none() && open > 0 {
            failure = Some("the engine stopped before the request finished".to_string());
        }
        match failure {
            // Never a silently truncated answer: a failure mid-stream is an error event.
            Some(reason) => {
                let error = ApiError::internal(format!("Generation failed: {reason}"));
                yield Ok(Event::default().data(error.to_json()));
            }
            None if include_usage => yield data(&meta.usage_chunk(usage)),
            None => {}
        }
        yield Ok(Event::default().data("[DONE]"));
    }
}

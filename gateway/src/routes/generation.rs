//! `POST /v1/chat/completions` and `POST /v1/completions`: validate, submit to the engine,
//! answer with one JSON body or a stream of server-sent events.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use engines::{Prompt, SamplingParams, TokenEvent};
use futures::{Stream, StreamExt};
use routing::{ModelRouter, Requester, RouteRequest, RoutedStream};
use serde_json::Value;
use std::sync::Arc;

use crate::accounting::{Accounted, RequestAccount, ServedModel};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::openai::chat::ChatCompletionRequest;
use crate::openai::completions::{CompletionRequest, DEFAULT_MAX_TOKENS};
use crate::openai::json::from_value;
use crate::openai::params::{CommonParams, ValidParams};
use crate::openai::response::{ChoiceEvent, Endpoint, FinishedChoice, ResponseMeta, UsageBody};
use crate::openai::JsonBody;
use crate::state::{AppState, ModelState};
use ledger::RecordStatus;
use tower_http::request_id::RequestId;

pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request_id): Extension<RequestId>,
    JsonBody(body): JsonBody<Value>,
) -> Response {
    let result = async {
        let request: ChatCompletionRequest = from_value(&body)?;
        let engine = resolve_model(&state, &caller, &request.model)?;
        let params = from_value::<CommonParams>(&body)?.validate()?;
        let prompt = Prompt::Chat(request.conversation()?);
        // OpenAI's chat default: as many tokens as the context has room for.
        let context = engine.info().context_length;
        let default_max = move |prompt_tokens: usize| context.saturating_sub(prompt_tokens).max(1);
        let meta = ResponseMeta::new(Endpoint::Chat, &request.model);
        let job = Job {
            state: &state,
            caller: &caller,
            request_id: &request_id,
            engine,
            meta,
        };
        job.run(vec![prompt], params, default_max).await
    }
    .await;
    labelled(&state, &body, result)
}

pub async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request_id): Extension<RequestId>,
    JsonBody(body): JsonBody<Value>,
) -> Response {
    let result = async {
        let request: CompletionRequest = from_value(&body)?;
        let engine = resolve_model(&state, &caller, &request.model)?;
        let params = from_value::<CommonParams>(&body)?.validate()?;
        let prompts = request.prompts()?;
        let meta = ResponseMeta::new(Endpoint::Completions, &request.model);
        let job = Job {
            state: &state,
            caller: &caller,
            request_id: &request_id,
            engine,
            meta,
        };
        job.run(prompts, params, |_| DEFAULT_MAX_TOKENS).await
    }
    .await;
    labelled(&state, &body, result)
}

/// The response, tagged with the model for the request counter: the requested id when it is a
/// configured model, else empty (client-chosen strings must not become label values).
fn labelled(state: &AppState, body: &Value, result: Result<Response, ApiError>) -> Response {
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    let model = body["model"]
        .as_str()
        .filter(|m| state.models.get(m).is_some())
        .unwrap_or("");
    response
        .extensions_mut()
        .insert(ServedModel(model.to_string()));
    response
}

/// The router of `model`, if it exists, the caller may use it, and it is loaded.
fn resolve_model(
    state: &AppState,
    caller: &Caller,
    model: &str,
) -> Result<Arc<ModelRouter>, ApiError> {
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

/// One generation request on its way through admission, the engine and the response.
struct Job<'a> {
    state: &'a AppState,
    caller: &'a Caller,
    request_id: &'a RequestId,
    engine: Arc<ModelRouter>,
    meta: ResponseMeta,
}

impl Job<'_> {
    /// Admits and routes a request. Each prompt is rendered and tokenised once, here: admission
    /// needs its size, and a local engine gets the ids (a remote one the original, with an
    /// estimated size). `default_max_tokens` gives the endpoint's `max_tokens` for a prompt of
    /// that many tokens when the request names none.
    async fn run(
        self,
        prompts: Vec<Prompt>,
        params: ValidParams,
        default_max_tokens: impl Fn(usize) -> usize,
    ) -> Result<Response, ApiError> {
        let (state, caller) = (self.state, self.caller);
        let tier = caller.tenant.tier.as_deref();
        let mut prepared = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let prompt = self.engine.prepare(tier, prompt)?;
            let max_tokens = params
                .max_tokens
                .unwrap_or_else(|| default_max_tokens(prompt.tokens()));
            prepared.push(RouteRequest {
                prompt,
                params: SamplingParams {
                    max_tokens,
                    ..params.sampling.clone()
                },
            });
        }
        let prompt_tokens: u64 = prepared.iter().map(|r| r.prompt.tokens() as u64).sum();
        let reserve = prompt_tokens
            + prepared
                .iter()
                .map(|r| r.params.max_tokens as u64)
                .sum::<u64>();
        let admission = tracing::info_span!("admission", prompt_tokens, reserved_tokens = reserve)
            .in_scope(|| state.quotas.admit(&caller.tenant, prompt_tokens, reserve))
            .map_err(|rejection| {
                let reason = rejection.reason.as_str();
                tracing::info!(reason, "request refused by quota");
                state
                    .requests
                    .count_rejection(caller.tenant.id.as_str(), reason);
                ApiError::rate_limited(&rejection)
            })?;
        // All prompts or none: a prompt that does not fit fails the whole request (and, with
        // nothing generated, it is not billed: the admission is dropped and refunded).
        let requester = Requester {
            tenant: caller.tenant.id.to_string(),
            weight: caller.tenant.limits.weight,
            tier: caller.tenant.tier.clone(),
            traceparent: crate::telemetry::traceparent(&tracing::Span::current()),
        };
        let streams = self.engine.submit_all(&requester, prepared)?;
        let limits = admission.status.clone();
        let request_id = self.request_id.header_value().to_str().unwrap_or("");
        let account = RequestAccount::new(
            state,
            caller,
            request_id,
            &self.meta.model,
            prompt_tokens,
            admission,
        );
        let mut response = if params.stream {
            let events = sse_events(self.meta, streams, params.include_usage, account);
            Sse::new(events).into_response()
        } else {
            whole_response(self.meta, streams, account).await?
        };
        crate::rate_limit_headers::insert(response.headers_mut(), &limits);
        response.extensions_mut().insert(Accounted);
        Ok(response)
    }
}

/// Every choice's events, interleaved as they come, tagged with the choice's index.
fn merged(streams: Vec<RoutedStream>) -> impl Stream<Item = (usize, TokenEvent)> + Unpin {
    futures::stream::select_all(streams.into_iter().enumerate().map(|(i, s)| {
        futures::stream::unfold(s, |mut s| async move { s.next().await.map(|e| (e, s)) })
            .map(move |e| (i, e))
            .boxed()
    }))
}

/// The non-streamed answer. Tokens are counted as they come, so a client that hangs up before
/// the end (dropping this future) is billed for what was generated.
async fn whole_response(
    meta: ResponseMeta,
    streams: Vec<RoutedStream>,
    mut account: RequestAccount,
) -> Result<Response, ApiError> {
    let count = streams.len();
    let mut texts = vec![String::new(); count];
    let mut finish_reasons = vec![None; count];
    let mut usage = UsageBody::default();
    let mut events = merged(streams);
    while let Some((i, event)) = events.next().await {
        match event {
            TokenEvent::Token { text, .. } => {
                account.on_token();
                texts[i].push_str(&text);
            }
            TokenEvent::Finished(completion) => {
                account.on_finished(&completion);
                usage.add(completion.usage);
                finish_reasons[i] = Some(completion.finish_reason);
            }
            TokenEvent::Routed { pool, replica } => account.on_routed(&pool, &replica),
            TokenEvent::Failed(reason) => {
                account.settle(RecordStatus::Failed).await;
                return Err(ApiError::internal(format!("Generation failed: {reason}")));
            }
            TokenEvent::Unavailable(reason) => {
                account.settle(RecordStatus::Failed).await;
                return Err(ApiError::no_replica(&meta.model, &reason));
            }
        }
    }
    let Some(finish_reasons) = finish_reasons.into_iter().collect::<Option<Vec<_>>>() else {
        account.settle(RecordStatus::Failed).await;
        return Err(ApiError::internal(
            "Generation failed: the engine stopped before the request finished",
        ));
    };
    let choices: Vec<FinishedChoice> = texts
        .into_iter()
        .zip(finish_reasons)
        .map(|(text, finish_reason)| FinishedChoice {
            text,
            finish_reason,
        })
        .collect();
    // Committed to the ledger before the body goes out.
    account.settle(RecordStatus::Completed).await;
    Ok(Json(meta.response(&choices, usage)).into_response())
}

fn data(value: &serde_json::Value) -> Result<Event, Infallible> {
    Ok(Event::default().data(value.to_string()))
}

/// The SSE body. It owns the token streams and the account: when the client hangs up, hyper
/// drops the body, the receivers go with it (the engine frees the sequences at its next step) and
/// the account settles as cancelled with the tokens sent so far.
fn sse_events(
    meta: ResponseMeta,
    streams: Vec<RoutedStream>,
    include_usage: bool,
    mut account: RequestAccount,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let choices = streams.len();
    let mut events = merged(streams);
    async_stream::stream! {
        for i in 0..choices {
            if let Some(chunk) = meta.chunk(i, ChoiceEvent::Start, include_usage) {
                yield data(&chunk);
            }
        }
        let mut usage = UsageBody::default();
        let mut open = choices;
        let mut failure = None;
        while let Some((i, event)) = events.next().await {
            let chunk = match event {
                // One chunk per generated token, as vLLM streams, even when its text is empty (a
                // special token, or bytes held back until a character is complete): clients
                // and load generators count tokens by chunks.
                TokenEvent::Token { text, .. } => {
                    account.on_token();
                    meta.chunk(i, ChoiceEvent::Text(&text), include_usage)
                }
                TokenEvent::Finished(completion) => {
                    account.on_finished(&completion);
                    usage.add(completion.usage);
                    open -= 1;
                    meta.chunk(i, ChoiceEvent::Finish(completion.finish_reason), include_usage)
                }
                TokenEvent::Routed { pool, replica } => {
                    account.on_routed(&pool, &replica);
                    None
                }
                TokenEvent::Failed(reason) | TokenEvent::Unavailable(reason) => {
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
                account.settle(RecordStatus::Failed).await;
                let error = ApiError::internal(format!("Generation failed: {reason}"));
                yield Ok(Event::default().data(error.to_json()));
            }
            None => {
                if include_usage {
                    yield data(&meta.usage_chunk(usage));
                }
                // Committed to the ledger before `[DONE]`, the response's last byte.
                account.settle(RecordStatus::Completed).await;
            }
        }
        yield Ok(Event::default().data("[DONE]"));
    }
}

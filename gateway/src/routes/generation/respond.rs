//! The answer: the engine's token events, relayed once (the [`Relay`]), shaped either into one
//! JSON body or into OpenAI's stream of server-sent events.

use std::convert::Infallible;

use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use engines::{FinishReason, Refusal, TokenEvent};
use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use ledger::RecordStatus;
use routing::RoutedStream;

use crate::accounting::RequestAccount;
use crate::error::ApiError;
use crate::openai::response::{ChoiceEvent, FinishedChoice, ResponseMeta, UsageBody};

/// What the client hears of the engine: text and finishes, per choice.
pub enum Output {
    /// A generated token's text (possibly empty: a special token, or bytes held back until a
    /// character is complete) of choice `choice`.
    Text {
        /// The choice's index.
        choice: usize,
        /// Its text.
        text: String,
    },
    /// Choice `choice` finished.
    Finished {
        /// The choice's index.
        choice: usize,
        /// Why.
        reason: FinishReason,
    },
}

/// Why a generation ended without finishing.
pub enum Failure {
    /// The engine failed.
    Engine(String),
    /// No replica could take it (before its first token).
    Unavailable(String),
    /// The upstream refused it as invalid.
    Refused(Refusal),
    /// The engine's streams ended before every choice finished.
    Incomplete,
}

impl Failure {
    fn reason(&self) -> &str {
        match self {
            Failure::Engine(reason) | Failure::Unavailable(reason) => reason,
            Failure::Refused(refusal) => &refusal.message,
            Failure::Incomplete => "the engine stopped before the request finished",
        }
    }

    /// What the client is told, as the response (before anything was sent) or as the
    /// stream's error event.
    pub fn to_error(&self, model: &str) -> ApiError {
        match self {
            Failure::Unavailable(reason) => ApiError::no_replica(model, reason),
            Failure::Refused(refusal) => ApiError::upstream_refused(refusal),
            other => ApiError::generation_failed(other.reason()),
        }
    }
}

/// The one loop over the engine's events, for both answers: it keeps the usage account (tokens,
/// routing, timings) and the usage total, and settles the account when the generation fails or
/// completes. Dropped early (the client hung up), the account settles as cancelled.
pub struct Relay {
    events: SelectAll<BoxStream<'static, (usize, TokenEvent)>>,
    account: Option<RequestAccount>,
    usage: UsageBody,
    choices: usize,
    open: usize,
}

impl Relay {
    /// Relays `streams` (one per choice, in choice order), accounting on `account`.
    pub fn new(streams: Vec<RoutedStream>, account: RequestAccount) -> Self {
        let choices = streams.len();
        // Every choice's events, interleaved as they come, tagged with the choice's index. The
        // routed stream is boxed: `unfold` moves its state in and out of a new future for every
        // event, and a pointer is cheaper to move than the stream (hundreds of bytes, per token).
        let events = futures::stream::select_all(streams.into_iter().enumerate().map(|(i, s)| {
            futures::stream::unfold(Box::new(s), |mut s| async move {
                s.next().await.map(|e| (e, s))
            })
            .map(move |e| (i, e))
            .boxed()
        }));
        Self {
            events,
            account: Some(account),
            usage: UsageBody::default(),
            choices,
            open: choices,
        }
    }

    /// How many choices the request has.
    pub fn choices(&self) -> usize {
        self.choices
    }

    /// The next output; `Ok(None)` once every choice finished. A failure settles the account as
    /// failed before it is returned.
    pub async fn next(&mut self) -> Result<Option<Output>, Failure> {
        let account = self
            .account
            .as_mut()
            .expect("a relay is not polled after it settled");
        while let Some((choice, event)) = self.events.next().await {
            match event {
                TokenEvent::Token { text, .. } => {
                    account.on_token();
                    return Ok(Some(Output::Text { choice, text }));
                }
                TokenEvent::Finished(completion) => {
                    account.on_finished(&completion);
                    self.usage.add(completion.usage);
                    self.open -= 1;
                    return Ok(Some(Output::Finished {
                        choice,
                        reason: completion.finish_reason,
                    }));
                }
                TokenEvent::Routed { pool, replica } => account.on_routed(&pool, &replica),
                TokenEvent::Failed(reason) => return Err(self.fail(Failure::Engine(reason)).await),
                TokenEvent::Unavailable(reason) => {
                    return Err(self.fail(Failure::Unavailable(reason)).await)
                }
                TokenEvent::Refused(refusal) => {
                    return Err(self.fail(Failure::Refused(refusal)).await)
                }
            }
        }
        if self.open > 0 {
            return Err(self.fail(Failure::Incomplete).await);
        }
        Ok(None)
    }

    async fn fail(&mut self, failure: Failure) -> Failure {
        if let Some(mut account) = self.account.take() {
            if matches!(failure, Failure::Unavailable(_) | Failure::Refused(_)) {
                account.on_not_served();
            }
            account.settle(RecordStatus::Failed).await;
        }
        failure
    }

    /// The usage of the completed request, once its record is committed to the ledger: the
    /// caller sends its last byte after this.
    pub async fn complete(mut self) -> UsageBody {
        if let Some(account) = self.account.take() {
            account.settle(RecordStatus::Completed).await;
        }
        self.usage
    }
}

/// The non-streamed answer. Tokens are counted as they come, so a client that hangs up before
/// the end (dropping this future) is billed for what was generated.
pub async fn whole_response(meta: ResponseMeta, mut relay: Relay) -> Result<Response, ApiError> {
    let mut texts = vec![String::new(); relay.choices()];
    let mut finish_reasons = vec![FinishReason::Stop; relay.choices()];
    loop {
        match relay.next().await {
            Ok(Some(Output::Text { choice, text })) => texts[choice].push_str(&text),
            Ok(Some(Output::Finished { choice, reason })) => finish_reasons[choice] = reason,
            Ok(None) => break,
            Err(failure) => return Err(failure.to_error(&meta.model)),
        }
    }
    let choices: Vec<FinishedChoice> = texts
        .into_iter()
        .zip(finish_reasons)
        .map(|(text, finish_reason)| FinishedChoice {
            text,
            finish_reason,
        })
        .collect();
    // Committed to the ledger before the body goes out.
    let usage = relay.complete().await;
    Ok(Json(meta.response(&choices, usage)).into_response())
}

fn data(json: String) -> Result<Event, Infallible> {
    Ok(Event::default().data(json))
}

/// The SSE body. It owns the relay: when the client hangs up, hyper drops the body, the token
/// streams go with it (the engine frees the sequences at its next step) and the account settles
/// as cancelled with the tokens sent so far.
pub fn sse_events(
    meta: ResponseMeta,
    mut relay: Relay,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream::stream! {
        for i in 0..relay.choices() {
            if let Some(chunk) = meta.chunk(i, ChoiceEvent::Start, include_usage) {
                yield data(chunk);
            }
        }
        let failure = loop {
            // One chunk per generated token, as vLLM streams, even when its text is empty:
            // clients and load generators count tokens by chunks.
            let chunk = match relay.next().await {
                Ok(Some(Output::Text { choice, text })) => {
                    meta.chunk(choice, ChoiceEvent::Text(&text), include_usage)
                }
                Ok(Some(Output::Finished { choice, reason })) => {
                    meta.chunk(choice, ChoiceEvent::Finish(reason), include_usage)
                }
                Ok(None) => break None,
                Err(failure) => break Some(failure),
            };
            if let Some(chunk) = chunk {
                yield data(chunk);
            }
        };
        match failure {
            // Never a silently truncated answer: a failure mid-stream is an error event.
            Some(failure) => {
                let error = failure.to_error(&meta.model);
                yield Ok(Event::default().data(error.to_json()));
            }
            None => {
                let usage_chunk = include_usage.then(|| meta.usage_chunk(relay.usage));
                // Committed to the ledger before `[DONE]`, the response's last byte.
                relay.complete().await;
                if let Some(chunk) = usage_chunk {
                    yield data(chunk);
                }
            }
        }
        yield Ok(Event::default().data("[DONE]"));
    }
}

//! The answer: the engine's token events, relayed once (the [`Relay`]), shaped either into one
//! JSON body or into OpenAI's stream of server-sent events. With tools, a choice's text is held
//! back while it may be a call ([`ChoiceText`]) and read as calls at its end.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{BufMut, Bytes, BytesMut};
use engine_api::{FinishReason, Logprobs, Refusal, TokenEvent};
use futures::stream::{BoxStream, Fuse, SelectAll};
use futures::{Stream, StreamExt};
use ledger::RecordStatus;
use routing::{Routed, RoutedStream};
use serde::Serialize;

use super::choices::Choices;
use crate::accounting::{BilledPrompt, RequestAccount};
use crate::error::ApiError;
use crate::openai::response::{
    ChoiceEnd, ChoiceEvent, FinishedChoice, ResponseMeta, TextPiece, UsageBody,
};
use crate::openai::tools::ToolSpec;

/// What the client hears of the engine: text and finishes, per choice.
pub enum Output {
    /// A generated token's text (possibly empty: a special token, or bytes held back until a
    /// character is complete) of choice `choice`.
    Text {
        /// The choice's index.
        choice: usize,
        /// Its text.
        text: String,
        /// Its log probabilities, when asked for.
        logprobs: Option<Box<Logprobs>>,
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
    events: SelectAll<BoxStream<'static, (usize, Routed)>>,
    account: Option<RequestAccount>,
    usage: UsageBody,
    choices: usize,
    per_prompt: Choices,
    /// Each prompt's tokens as billed at admission, and whether that was an estimate.
    prompts: Vec<BilledPrompt>,
    open: usize,
}

impl Relay {
    /// Relays `streams` (one per choice, in choice order, each prompt's `choices` together;
    /// `prompts` as billed, one per prompt), accounting on `account`.
    pub fn new(
        streams: Vec<RoutedStream>,
        per_prompt: Choices,
        prompts: Vec<BilledPrompt>,
        account: RequestAccount,
    ) -> Self {
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
            per_prompt,
            prompts,
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
        while let Some((choice, routed)) = self.events.next().await {
            let event = match routed {
                Routed::Placed { pool, replica } => {
                    account.on_routed(&pool, &replica);
                    continue;
                }
                Routed::Event(event) => event,
            };
            match event {
                TokenEvent::Token { text, logprobs, .. } => {
                    account.on_token();
                    return Ok(Some(Output::Text {
                        choice,
                        text,
                        logprobs,
                    }));
                }
                TokenEvent::Finished(completion) => {
                    account.on_finished(&completion);
                    let mut usage = completion.usage;
                    // A prompt's tokens count once, with its first choice; the engine's count
                    // is what is billed.
                    if !self.per_prompt.bills_the_prompt(choice) {
                        usage.prompt_tokens = 0;
                        usage.cached_tokens = 0;
                    } else if let Some(billed) = self.prompts.get(self.per_prompt.prompt_of(choice))
                    {
                        let counted = (!usage.prompt_estimated).then_some(usage.prompt_tokens);
                        account.on_prompt_counted(*billed, counted.map(|n| n as u64));
                    }
                    self.usage.add(usage);
                    self.open -= 1;
                    return Ok(Some(Output::Finished {
                        choice,
                        reason: completion.finish_reason,
                    }));
                }
                TokenEvent::Failed(failure) => {
                    return Err(self.fail(Failure::Engine(failure.message)).await)
                }
                // The router turns a decline into a retry or `Unavailable`; alike here.
                TokenEvent::Unavailable(reason) | TokenEvent::Declined(reason) => {
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

/// One choice's text so far (a whole answer's, or a stream's held from its start), and its
/// log probabilities.
struct ChoiceText {
    text: String,
    logprobs: Vec<Logprobs>,
    /// Why it ended (whole answers).
    finish_reason: FinishReason,
}

impl Default for ChoiceText {
    fn default() -> Self {
        Self {
            text: String::new(),
            logprobs: Vec::new(),
            finish_reason: FinishReason::Stop,
        }
    }
}

impl ChoiceText {
    fn push(&mut self, text: &str, logprobs: Option<Box<Logprobs>>) {
        self.text.push_str(text);
        self.logprobs.extend(logprobs.map(|l| *l));
    }

    /// The text as one piece; it starts the choice (text is held only from a stream's start).
    fn piece(&self) -> TextPiece<'_> {
        TextPiece {
            text: &self.text,
            logprobs: &self.logprobs,
            offset: 0,
        }
    }
}

/// Choices generated and returned per prompt (`best_of` and `n` of the completions endpoint).
#[derive(Debug, Clone, Copy)]
pub struct BestOf {
    /// Generated per prompt.
    pub generated: usize,
    /// Returned per prompt: the most likely.
    pub returned: usize,
}

impl BestOf {
    /// Keeps, of each prompt's generated choices, the `returned` with the highest total log
    /// probability, best first.
    fn select(self, choices: Vec<ChoiceText>) -> Vec<ChoiceText> {
        if self.returned >= self.generated {
            return choices;
        }
        let total =
            |c: &ChoiceText| -> f64 { c.logprobs.iter().map(|l| l.sampled.logprob as f64).sum() };
        let mut kept = Vec::new();
        let mut choices = choices.into_iter().peekable();
        while choices.peek().is_some() {
            let mut group: Vec<ChoiceText> = choices.by_ref().take(self.generated).collect();
            group.sort_by(|a, b| total(b).total_cmp(&total(a)));
            kept.extend(group.into_iter().take(self.returned));
        }
        kept
    }
}

/// The non-streamed answer. Tokens are counted as they come, so a client that hangs up before
/// the end (dropping this future) is billed for what was generated (every `best_of`
/// candidate included).
pub async fn whole_response(
    meta: ResponseMeta,
    mut relay: Relay,
    tools: Option<Arc<ToolSpec>>,
    logprobs: bool,
    best_of: BestOf,
) -> Result<Response, ApiError> {
    let mut texts: Vec<ChoiceText> = (0..relay.choices())
        .map(|_| ChoiceText::default())
        .collect();
    loop {
        match relay.next().await {
            Ok(Some(Output::Text {
                choice,
                text,
                logprobs,
            })) => texts[choice].push(&text, logprobs),
            Ok(Some(Output::Finished { choice, reason })) => texts[choice].finish_reason = reason,
            Ok(None) => break,
            Err(failure) => return Err(failure.to_error(&meta.model)),
        }
    }
    let choices: Vec<FinishedChoice> = best_of
        .select(texts)
        .into_iter()
        .map(|choice| {
            let reason = choice.finish_reason;
            let tool_calls = tools.as_ref().and_then(|t| t.parse(&choice.text));
            FinishedChoice {
                finish_reason: match tool_calls {
                    Some(_) => ChoiceEnd::ToolCalls,
                    None => ChoiceEnd::Engine(reason),
                },
                tool_calls,
                text: choice.text,
                logprobs: logprobs.then_some(choice.logprobs),
            }
        })
        .collect();
    // Committed to the ledger before the body goes out.
    let usage = relay.complete().await;
    Ok(Json(meta.response(&choices, usage)).into_response())
}

/// Server-sent events, written into one buffer that is reused: what is written between two
/// [`Self::take`]s leaves as one body frame, a slice of that buffer (no allocation per event
/// once the buffer is warm: a frame hyper has written and dropped gives its space back).
pub struct SseWriter {
    buffer: BytesMut,
    /// An event's JSON on its way into `buffer`: serde_json writes a piece at a time, which a
    /// vector takes faster than a `BytesMut`.
    json: Vec<u8>,
}

impl Default for SseWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl SseWriter {
    /// Room made at once when the buffer runs low (a few tokens' chunks).
    const RESERVE: usize = 4096;

    /// An empty writer.
    pub fn new() -> Self {
        Self {
            buffer: BytesMut::new(),
            // A chunk's JSON is a few hundred bytes: no regrowth on the first ones.
            json: Vec::with_capacity(512),
        }
    }

    /// A `data:` event carrying `json` (compact JSON has no line breaks, so one `data:` line holds
    /// it).
    pub fn json(&mut self, json: &impl Serialize) {
        self.json.clear();
        serde_json::to_writer(&mut self.json, json).expect("an event serialises");
        self.open();
        self.buffer.put_slice(&self.json);
        self.buffer.put_slice(b"\n\n");
    }

    /// An event carrying `text` as it is (`[DONE]`, an error's JSON).
    pub fn text(&mut self, text: &str) {
        self.open();
        self.buffer.put_slice(text.as_bytes());
        self.buffer.put_slice(b"\n\n");
    }

    fn open(&mut self) {
        if self.buffer.capacity() - self.buffer.len() < Self::RESERVE / 4 {
            self.buffer.reserve(Self::RESERVE);
        }
        self.buffer.put_slice(b"data: ");
    }

    /// A named event (`event: <name>`, as the Responses and Messages APIs send them)
    /// carrying `json`.
    pub fn named(&mut self, name: &str, json: &impl Serialize) {
        self.buffer.reserve(name.len() + 8);
        self.buffer.put_slice(b"event: ");
        self.buffer.put_slice(name.as_bytes());
        self.buffer.put_slice(b"\n");
        self.json(json);
    }

    /// A named event carrying `text` as it is (an error's JSON).
    pub fn named_text(&mut self, name: &str, text: &str) {
        self.buffer.reserve(name.len() + 8);
        self.buffer.put_slice(b"event: ");
        self.buffer.put_slice(name.as_bytes());
        self.buffer.put_slice(b"\n");
        self.text(text);
    }

    /// The events written since the last take, as one frame; `None` if there are none.
    pub fn take(&mut self) -> Option<Result<BytesMut, Infallible>> {
        (!self.buffer.is_empty()).then(|| Ok(self.buffer.split()))
    }
}

/// The SSE response over `frames`: the frames that are ready together go out as one (one
/// write to the socket, not one per token when the engine hands over several at once, as a
/// remote upstream's segment of chunks does); none waits for another.
pub fn sse_response(
    frames: impl Stream<Item = Result<BytesMut, Infallible>> + Send + 'static,
) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/event-stream"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(ReadyJoined::new(frames)),
    )
        .into_response()
}

/// The frames of a stream, those ready together joined into one (up to
/// [`Self::MOST_FRAMES`]). Like `futures`' `ready_chunks` and a concatenation, without a vector
/// per frame, and without a copy when the frames lie next to each other in one buffer (an
/// [`SseWriter`]'s do, unless it had to grow in between).
struct ReadyJoined<S> {
    /// Fused: it may have ended while frames before its end were joined.
    frames: Pin<Box<Fuse<S>>>,
}

impl<S: Stream> ReadyJoined<S> {
    const MOST_FRAMES: usize = 64;

    fn new(frames: S) -> Self {
        Self {
            frames: Box::pin(frames.fuse()),
        }
    }
}

impl<S: Stream<Item = Result<BytesMut, Infallible>>> Stream for ReadyJoined<S> {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let frames = &mut self.get_mut().frames;
        let Some(Ok(mut joined)) = ready!(frames.as_mut().poll_next(cx)) else {
            return Poll::Ready(None);
        };
        for _ in 1..Self::MOST_FRAMES {
            match frames.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(frame))) => joined.unsplit(frame),
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        Poll::Ready(Some(Ok(joined.freeze())))
    }
}

/// The SSE body. It owns the relay: when the client hangs up, hyper drops the body, the token
/// streams go with it (the engine frees the sequences at its next step) and the account settles
/// as cancelled with the tokens sent so far.
pub fn sse_events(
    meta: ResponseMeta,
    mut relay: Relay,
    include_usage: bool,
    tools: Option<Arc<ToolSpec>>,
) -> impl Stream<Item = Result<BytesMut, Infallible>> {
    async_stream::stream! {
        // Per choice: the text held back while it may still be a tool call (`None` once it
        // is known to be content: tokens then go out as they come).
        let mut held: Vec<Option<ChoiceText>> = (0..relay.choices())
            .map(|_| tools.as_ref().filter(|t| t.may_open_call("")).map(|_| ChoiceText::default()))
            .collect();
        let mut sent = vec![0usize; relay.choices()];
        let mut sse = SseWriter::new();
        for i in 0..relay.choices() {
            if let Some(chunk) = meta.chunk(i, ChoiceEvent::Start, include_usage) {
                sse.json(&chunk);
            }
        }
        if let Some(frame) = sse.take() {
            yield frame;
        }
        let failure = loop {
            // One chunk per generated token, as vLLM streams, even when its text is empty:
            // clients and load generators count tokens by chunks.
            match relay.next().await {
                Ok(Some(Output::Text { choice, text, logprobs })) => match &mut held[choice] {
                    Some(holding) => {
                        holding.push(&text, logprobs);
                        let may_call = tools.as_ref().is_some_and(|t| t.may_open_call(&holding.text));
                        if !may_call {
                            sse_chunk(&mut sse, meta.chunk(choice, ChoiceEvent::Text(holding.piece()), include_usage));
                            sent[choice] = holding.text.len();
                            held[choice] = None;
                        }
                    }
                    None => {
                        let logprobs = logprobs.as_deref().map(std::slice::from_ref).unwrap_or_default();
                        let piece = TextPiece { text: &text, logprobs, offset: sent[choice] };
                        sse_chunk(&mut sse, meta.chunk(choice, ChoiceEvent::Text(piece), include_usage));
                        sent[choice] += text.len();
                    }
                },
                Ok(Some(Output::Finished { choice, reason })) => {
                    let mut end = ChoiceEnd::Engine(reason);
                    if let Some(holding) = held[choice].take() {
                        match tools.as_ref().and_then(|t| t.parse(&holding.text)) {
                            Some(calls) => {
                                sse_chunk(&mut sse, meta.chunk(choice, ChoiceEvent::ToolCalls(&calls), include_usage));
                                end = ChoiceEnd::ToolCalls;
                            }
                            None => sse_chunk(&mut sse, meta.chunk(choice, ChoiceEvent::Text(holding.piece()), include_usage)),
                        }
                    }
                    sse_chunk(&mut sse, meta.chunk(choice, ChoiceEvent::Finish(end), include_usage));
                }
                Ok(None) => break None,
                Err(failure) => break Some(failure),
            };
            if let Some(frame) = sse.take() {
                yield frame;
            }
        };
        match failure {
            // Never a silently truncated answer: a failure mid-stream is an error event.
            Some(failure) => {
                let error = failure.to_error(&meta.model);
                sse.text(&error.to_json());
            }
            None => {
                let usage_chunk = include_usage.then(|| meta.usage_chunk(relay.usage));
                // Committed to the ledger before `[DONE]`, the response's last byte.
                relay.complete().await;
                if let Some(chunk) = usage_chunk {
                    sse.json(&chunk);
                }
            }
        }
        sse.text("[DONE]");
        if let Some(frame) = sse.take() {
            yield frame;
        }
    }
}

/// Writes `chunk`, if the endpoint has one for the event.
fn sse_chunk(sse: &mut SseWriter, chunk: Option<impl Serialize>) {
    if let Some(chunk) = chunk {
        sse.json(&chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn events_ready_together_go_out_as_one_frame_and_none_waits_for_another() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<BytesMut, Infallible>>();
        let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let mut body = sse_response(events).into_body();
        let event = |text: &str| {
            let mut sse = SseWriter::new();
            sse.text(text);
            sse.take().unwrap()
        };
        for text in ["\"a\"", "\"b\"", "\"c\""] {
            tx.send(event(text)).unwrap();
        }
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&frame[..], b"data: \"a\"\n\ndata: \"b\"\n\ndata: \"c\"\n\n");
        // Frames of one writer (side by side in its buffer), JSON events among them.
        let mut sse = SseWriter::new();
        for n in 0..3 {
            sse.json(&serde_json::json!({ "n": n }));
            tx.send(sse.take().unwrap()).unwrap();
        }
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(
            &frame[..],
            b"data: {\"n\":0}\n\ndata: {\"n\":1}\n\ndata: {\"n\":2}\n\n"
        );
        // One ready event is sent at once, alone.
        tx.send(event("[DONE]")).unwrap();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&frame[..], b"data: [DONE]\n\n");
        drop(tx);
        assert!(body.frame().await.is_none());
    }
}

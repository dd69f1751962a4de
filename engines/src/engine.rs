//! The engine interface the gateway talks to: `submit(request) -> token stream`.
//!
//! A stream is an unbounded channel of [`TokenEvent`]s. Dropping the receiver is cancellation:
//! the engine notices at its next step and frees the sequence.

use policies::{Share, TenantId};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::error::{EngineError, Result};
use crate::sampling::SamplingParams;
use crate::text::ChatMessage;

/// What to complete.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Raw text (the completions endpoint).
    Text(String),
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// A conversation with the functions the model may call (OpenAI's `tools`), rendered
    /// through the chat template if it knows tools, else in the system message
    /// ([`crate::text::tools`]).
    ChatWithTools(Vec<ChatMessage>, Arc<Vec<serde_json::Value>>),
    /// Pre-tokenised input.
    Tokens(Vec<u32>),
}

impl Prompt {
    /// A conversation as plain messages, for engines that do not render templates themselves
    /// (remote upstreams, the synthetic engine): tools described in the system message and
    /// calls written out. `None` for text and token prompts.
    pub fn plain_messages(&self) -> Option<Vec<ChatMessage>> {
        match self {
            Prompt::Chat(messages) => Some(crate::text::tools::flatten(messages, &[])),
            Prompt::ChatWithTools(messages, tools) => {
                Some(crate::text::tools::flatten(messages, tools))
            }
            Prompt::Text(_) | Prompt::Tokens(_) => None,
        }
    }
}

/// One generation request, already validated at the edge.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// What to continue: chat messages, text or token ids.
    pub prompt: Prompt,
    /// How to sample and when to stop.
    pub params: SamplingParams,
    /// Who asks (for fair share and accounting); a label, not a credential.
    pub tenant: TenantId,
    /// The tenant's scheduling terms: weight, priority class, caps, queue bound.
    pub share: Share,
    /// W3C `traceparent` of the caller's span: remote engines forward it, so the upstream's
    /// spans join the gateway's trace.
    pub traceparent: Option<String>,
    /// Who may reuse this request's cached prompt blocks, and whose it may reuse: `None`, its
    /// tenant alone; otherwise every request with the same scope (a sharing group, or a
    /// `cache_salt`). Requests of different scopes never share a block.
    pub cache_scope: Option<String>,
}

/// The prefix-cache scope of a request of `tenant` that names `cache_scope`, as its kind and
/// its name: the tenant's own scope when it names none, else the shared one it names (a
/// sharing group, narrowed by a salt). Kinds are spelled apart, so no shared name can pose as a
/// tenant. Whatever keys by scope (the local engine's block keys, routing's placement) takes it
/// from here, so that they agree on which requests share.
pub fn prefix_cache_scope<'a>(tenant: &'a TenantId, cache_scope: Option<&'a str>) -> [&'a str; 2] {
    match cache_scope {
        Some(scope) => ["shared", scope],
        None => ["tenant", tenant.as_str()],
    }
}

impl GenerationRequest {
    /// Its prefix-cache scope ([`prefix_cache_scope`]).
    pub fn prefix_cache_scope(&self) -> [&str; 2] {
        prefix_cache_scope(&self.tenant, self.cache_scope.as_deref())
    }

    /// A request of `tenant` with the default terms (weight 1, interactive).
    pub fn new(prompt: Prompt, params: SamplingParams, tenant: TenantId) -> Self {
        Self {
            prompt,
            params,
            tenant,
            share: Share::default(),
            traceparent: None,
            cache_scope: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    /// The OpenAI API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the prompt as the model saw it (after the chat template).
    pub prompt_tokens: usize,
    /// Every sampled token, the end-of-sequence token included (as vLLM counts).
    pub completion_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache instead of being
    /// computed (OpenAI's `usage.prompt_tokens_details.cached_tokens`).
    pub cached_tokens: usize,
    /// `prompt_tokens` is the gateway's own estimate: a remote upstream reported no usage.
    pub prompt_estimated: bool,
}

/// Timing of one request as the engine saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequestTiming {
    /// From submission until the engine started the request.
    pub queue: Duration,
    /// Running the prompt through the model.
    pub prefill: Duration,
    /// From submission until the first token was sampled.
    pub time_to_first_token: Duration,
    /// Number of decode steps after the first token.
    pub decode_steps: usize,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Tokens in and out.
    pub usage: Usage,
    /// How long each phase took.
    pub timing: RequestTiming,
}

/// Why an upstream refused a request, in its own (OpenAI-format) words, which speak of the
/// request, not of the upstream.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Refusal {
    /// `error.message`.
    pub message: String,
    /// `error.param`: the field at fault.
    pub param: Option<String>,
    /// `error.code`.
    pub code: Option<String>,
}

impl Refusal {
    /// How a client is told of an error its own request caused (its output schema or grammar,
    /// its prompt, its token ids, its messages for the template): `None` for the engine's own
    /// failures. A request's own fault never counts against the replica that found it.
    pub fn of(error: &EngineError) -> Option<Refusal> {
        let (param, code) = match error {
            EngineError::InvalidConstraint(_) | EngineError::Constraint(_) => {
                ("response_format", "invalid_value")
            }
            EngineError::ContextLengthExceeded { .. } => ("messages", "context_length_exceeded"),
            EngineError::EmptyPrompt => ("prompt", "empty_prompt"),
            EngineError::InvalidTokenId(_) => ("prompt", "invalid_value"),
            EngineError::ChatTemplate(_) => ("messages", "invalid_value"),
            EngineError::InvalidInput(_) => ("input", "invalid_value"),
            _ => return None,
        };
        Some(Refusal {
            message: error.to_string(),
            param: Some(param.to_string()),
            code: Some(code.to_string()),
        })
    }
}

/// One token's log probability, as OpenAI reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's text (its bytes decoded, invalid UTF-8 replaced).
    pub token: String,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// Natural log of its probability under the model (before temperature, penalties and
    /// grammar masks, as vLLM reports by default).
    pub logprob: f32,
}

/// The log probabilities reported with one sampled token.
#[derive(Debug, Clone, PartialEq)]
pub struct Logprobs {
    /// The sampled token's.
    pub sampled: TokenLogprob,
    /// The most likely tokens at that position, most likely first (`top_logprobs` of them).
    pub top: Vec<TokenLogprob>,
}

/// What the stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenEvent {
    /// A sampled token and the text it completes (empty while a multi-byte character or a
    /// possible stop string is incomplete).
    Token {
        /// The token's id (`REMOTE_TOKEN_ID` from a remote engine).
        id: u32,
        /// The text it completes.
        text: String,
        /// Its log probabilities, when the request asked for them.
        logprobs: Option<Box<Logprobs>>,
    },
    /// Generation ended normally; no more events follow.
    Finished(Completion),
    /// Generation failed after it started; no more events follow.
    Failed(String),
    /// The engine could not start the request (an upstream refused the connection, timed out
    /// or answered 5xx/429) and generated nothing: safe to retry on another replica. No more
    /// events follow.
    Unavailable(String),
    /// The upstream declined the request with a 4xx that is neither the request's fault nor
    /// the replica's failure (429: busy; 401, 403, 404: not set up for this model or secret)
    /// and generated nothing: another replica may serve it, and this one is not counted as
    /// failed. No more events follow.
    Declined(String),
    /// The request's own fault, not the replica's: an upstream refused it as invalid (its 400,
    /// 413 or 422) before generating anything, or a local engine found its output grammar
    /// failing (possibly after some tokens). No more events follow.
    Refused(Refusal),
}

/// The token id of a token that came from a remote engine, which reports text, not ids.
pub const REMOTE_TOKEN_ID: u32 = u32::MAX;

impl PreparedPrompt {
    /// A prompt tokenised by a local engine: submitted as its ids, sized exactly.
    pub fn tokenized(ids: Vec<u32>) -> Self {
        Self {
            tokens: ids.len(),
            prompt: Prompt::Tokens(ids),
            estimated: false,
        }
    }
}

/// A prompt made ready for submission, with its size for admission.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    /// What to submit: token ids for local engines (tokenised once, here), the original text or
    /// conversation for remote ones (the upstream renders and tokenises it).
    pub prompt: Prompt,
    /// Prompt tokens: exact for local engines, an estimate for remote ones (see
    /// [`PreparedPrompt::estimated`]).
    pub tokens: usize,
    /// True when `tokens` is an estimate; billing then uses the upstream's reported usage.
    pub estimated: bool,
}

/// The receiving end of a submission.
pub struct TokenStream {
    /// The engine's id for this submission (as in its step records).
    pub id: u64,
    /// Prompt length in tokens, known at submission.
    pub prompt_tokens: usize,
    receiver: mpsc::UnboundedReceiver<TokenEvent>,
    /// The work that feeds `receiver`, when the reader drives it (see [`TokenStream::driven`]);
    /// `None` for an engine with a thread or task of its own, or once it has finished.
    producer: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl std::fmt::Debug for TokenStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStream")
            .field("id", &self.id)
            .field("prompt_tokens", &self.prompt_tokens)
            .field("driven", &self.producer.is_some())
            .finish()
    }
}

impl TokenStream {
    /// A stream of request `id` (prompt of `prompt_tokens`) fed by `receiver`.
    pub fn new(
        id: u64,
        prompt_tokens: usize,
        receiver: mpsc::UnboundedReceiver<TokenEvent>,
    ) -> Self {
        Self {
            id,
            prompt_tokens,
            receiver,
            producer: None,
        }
    }

    /// A stream whose events come from `producer`, run by whoever reads the stream, inside
    /// [`Self::next`]: no task of its own, so a token reaches the reader without waking another
    /// task (a remote call's relay). Dropping the stream drops the producer, and with it its
    /// work (a remote call's connection).
    pub fn driven(
        id: u64,
        prompt_tokens: usize,
        receiver: mpsc::UnboundedReceiver<TokenEvent>,
        producer: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self {
            producer: Some(Box::pin(producer)),
            ..Self::new(id, prompt_tokens, receiver)
        }
    }

    /// The next event; `None` if the engine dropped the sender without a final event.
    pub async fn next(&mut self) -> Option<TokenEvent> {
        std::future::poll_fn(|cx| self.poll_next_event(cx)).await
    }

    /// Polls for the next event, running the producer (if the stream has one) until it has
    /// sent one or waits.
    fn poll_next_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<TokenEvent>> {
        loop {
            if let Poll::Ready(event) = self.receiver.poll_recv(cx) {
                return Poll::Ready(event);
            }
            let Some(producer) = &mut self.producer else {
                return Poll::Pending;
            };
            match producer.as_mut().poll(cx) {
                // Done: its sender is gone, so the receiver now drains and then ends.
                Poll::Ready(()) => self.producer = None,
                Poll::Pending => {
                    // It may have sent something before it waited.
                    return self.receiver.poll_recv(cx);
                }
            }
        }
    }

    /// Gives the request up, as dropping the stream does, while keeping the stream: the
    /// engine sees its receiver closed and frees the sequence (a driven stream drops its
    /// producer).
    pub fn cancel(&mut self) {
        self.producer = None;
        self.receiver.close();
    }

    /// Blocking variant for non-async callers (tests, benchmarks). A driven stream's producer
    /// runs on this thread (it must not need a runtime's timers or sockets: remote engines'
    /// streams are read from async code).
    pub fn blocking_next(&mut self) -> Option<TokenEvent> {
        if self.producer.is_some() {
            return futures::executor::block_on(self.next());
        }
        self.receiver.blocking_recv()
    }
}

/// Collected output of a whole stream (tests, benchmarks, non-streaming responses).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedOutput {
    /// Every generated token id.
    pub token_ids: Vec<u32>,
    /// The whole generated text.
    pub text: String,
    /// Each token's log probabilities, when the request asked for them.
    pub logprobs: Vec<Logprobs>,
    /// How it ended.
    pub completion: Completion,
}

impl TokenStream {
    /// Reads the stream to its end.
    pub async fn collect(mut self) -> std::result::Result<CollectedOutput, String> {
        let mut out = Collecting::default();
        while let Some(event) = self.next().await {
            if let Some(done) = Self::fold(&mut out, event) {
                return done;
            }
        }
        Err("engine stopped without finishing the request".into())
    }

    /// Reads the stream to its end, blocking the current thread.
    pub fn blocking_collect(mut self) -> std::result::Result<CollectedOutput, String> {
        let mut out = Collecting::default();
        while let Some(event) = self.blocking_next() {
            if let Some(done) = Self::fold(&mut out, event) {
                return done;
            }
        }
        Err("engine stopped without finishing the request".into())
    }

    fn fold(
        out: &mut Collecting,
        event: TokenEvent,
    ) -> Option<std::result::Result<CollectedOutput, String>> {
        match event {
            TokenEvent::Token { id, text, logprobs } => {
                out.ids.push(id);
                out.text.push_str(&text);
                out.logprobs.extend(logprobs.map(|l| *l));
                None
            }
            TokenEvent::Finished(completion) => {
                let out = std::mem::take(out);
                Some(Ok(CollectedOutput {
                    token_ids: out.ids,
                    text: out.text,
                    logprobs: out.logprobs,
                    completion,
                }))
            }
            TokenEvent::Failed(e) | TokenEvent::Unavailable(e) | TokenEvent::Declined(e) => {
                Some(Err(e))
            }
            TokenEvent::Refused(refusal) => Some(Err(refusal.message)),
        }
    }
}

/// What [`TokenStream::collect`] has read so far.
#[derive(Default)]
struct Collecting {
    ids: Vec<u32>,
    text: String,
    logprobs: Vec<Logprobs>,
}

/// Live counters of an engine, readable from any thread.
#[derive(Debug, Default)]
pub struct EngineCounters {
    /// Requests accepted.
    pub submitted: AtomicU64,
    /// Requests that ran to a stop or length limit.
    pub finished: AtomicU64,
    /// Sequences freed because their receiver was dropped (client gone).
    pub cancelled: AtomicU64,
    /// Requests that failed inside the engine.
    pub failed: AtomicU64,
    /// Prompt tokens processed.
    pub prompt_tokens: AtomicU64,
    /// Tokens sampled.
    pub generated_tokens: AtomicU64,
    /// Forward passes run.
    pub steps: AtomicU64,
    /// Tokens run through the model, over all steps (divide by `steps` for the mean batch).
    pub batch_tokens: AtomicU64,
    /// Sequences whose KV blocks were freed to let others finish (recomputed later).
    pub preemptions: AtomicU64,
    /// Sequences currently running or waiting.
    pub active: AtomicU64,
    /// Sequences in the running batch.
    pub running: AtomicU64,
    /// Sequences waiting for admission.
    pub waiting: AtomicU64,
    /// Free KV-cache blocks.
    pub kv_blocks_free: AtomicU64,
    /// KV-cache blocks in the pool.
    pub kv_blocks_total: AtomicU64,
    /// KV-cache blocks registered in the prefix cache (held or free to evict).
    pub kv_blocks_cached: AtomicU64,
    /// Prompt tokens looked up in the prefix cache (at each request's first admission).
    pub prefix_query_tokens: AtomicU64,
    /// Of those, tokens found there (not computed).
    pub prefix_hit_tokens: AtomicU64,
    /// Per tenant: queue, service and preemptions.
    pub tenants: dashmap::DashMap<TenantId, Arc<TenantCounters>>,
}

impl EngineCounters {
    /// Reads one counter (relaxed: the figures are for monitoring).
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// `tenant`'s counters, created at its first request. Sequences keep the `Arc`, so the
    /// scheduler thread updates them without touching the map.
    pub fn tenant(&self, tenant: &TenantId) -> Arc<TenantCounters> {
        if let Some(counters) = self.tenants.get(tenant) {
            return counters.clone();
        }
        self.tenants.entry(tenant.clone()).or_default().clone()
    }
}

/// One tenant's figures in one engine (for `gateway_engine_tenant_*`).
#[derive(Debug, Default)]
pub struct TenantCounters {
    /// Sequences waiting for admission now (new or preempted).
    pub waiting: AtomicU64,
    /// Sequences in the running batch now.
    pub running: AtomicU64,
    /// Sequences admitted for the first time (each one's queue time is in `queue_nanos`).
    pub admitted: AtomicU64,
    /// Time from submission to first admission, summed over `admitted`, in nanoseconds.
    pub queue_nanos: AtomicU64,
    /// Times one of its sequences was preempted (blocks freed, recomputed later).
    pub preemptions: AtomicU64,
    /// Tokens run through the model for it (prompt, recompute and decode): the service
    /// received.
    pub service_tokens: AtomicU64,
    /// Requests refused because its waiting queue was full, or shed (batch class) because
    /// the engine was backed up.
    pub refused: AtomicU64,
    /// Its prompt tokens looked up in the prefix cache.
    pub prefix_query_tokens: AtomicU64,
    /// Of those, tokens found there (not computed).
    pub prefix_hit_tokens: AtomicU64,
}

/// Static facts about the model an engine serves.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The id clients use.
    pub id: String,
    /// Prompt plus completion tokens the model can hold.
    pub context_length: usize,
    /// Size of the vocabulary (0 when unknown: a remote engine).
    pub vocab_size: usize,
    /// What requests that leave a sampling setting out get (the file's recommendation; the
    /// gateway puts the operator's `[models.defaults]` over it).
    pub sampling_defaults: crate::sampling::SamplingDefaults,
}

/// Anything that turns requests into token streams: a local candle engine, the synthetic
/// benchmark engine, or a remote OpenAI-compatible upstream.
pub trait Engine: Send + Sync + 'static {
    /// What model this is.
    fn info(&self) -> &ModelInfo;

    /// Validates and enqueues a request; the stream starts at once. Errors here (prompt too
    /// long, template failure) are the caller's fault and nothing was enqueued.
    fn submit(&self, request: GenerationRequest) -> Result<TokenStream>;

    /// Submits several requests together (all or none). Engines that can should queue them
    /// atomically; the default submits one by one.
    fn submit_all(&self, requests: Vec<GenerationRequest>) -> Result<Vec<TokenStream>> {
        requests.into_iter().map(|r| self.submit(r)).collect()
    }

    /// Readies a prompt for submission and sizes it, without running it: local engines render
    /// the chat template and tokenise (callers then submit the ids), remote ones estimate.
    fn prepare_prompt(&self, prompt: &Prompt) -> Result<PreparedPrompt>;

    /// The engine's live counters, for metrics and `/load`.
    fn counters(&self) -> &EngineCounters;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A request's own errors are refusals (the client's 4xx, never the replica's failure);
    /// the engine's own are not.
    #[test]
    fn request_faults_are_told_apart_from_engine_failures() {
        let grammar = Refusal::of(&EngineError::Constraint("NoExtensionBias".into()));
        assert_eq!(
            grammar.as_ref().and_then(|r| r.param.as_deref()),
            Some("response_format")
        );
        for fault in [
            EngineError::InvalidConstraint("x".into()),
            EngineError::EmptyPrompt,
            EngineError::InvalidTokenId(7),
            EngineError::ChatTemplate("x".into()),
            EngineError::ContextLengthExceeded {
                context_length: 1,
                prompt_tokens: 2,
                max_tokens: 3,
            },
        ] {
            assert!(Refusal::of(&fault).is_some(), "{fault:?}");
        }
        for failure in [
            EngineError::EngineStopped,
            EngineError::Load("x".into()),
            EngineError::Tokenizer("x".into()),
            EngineError::Embedding("x".into()),
        ] {
            assert!(Refusal::of(&failure).is_none(), "{failure:?}");
        }
    }

    /// Sets its flag when dropped: shows whether a producer was dropped.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn token(text: &str) -> TokenEvent {
        TokenEvent::Token {
            id: 0,
            text: text.into(),
            logprobs: None,
        }
    }

    /// A driven stream whose producer sends `a`, waits for `go`, then sends `b` and ends.
    fn driven(dropped: Arc<AtomicBool>) -> (TokenStream, tokio::sync::oneshot::Sender<()>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let producer = async move {
            let _flag = DropFlag(dropped);
            let _ = events.send(token("a"));
            let _ = wait.await;
            let _ = events.send(token("b"));
        };
        (TokenStream::driven(1, 2, receiver, producer), go)
    }

    #[tokio::test]
    async fn a_driven_stream_runs_its_producer_as_it_is_read_and_ends_with_it() {
        let dropped = Arc::new(AtomicBool::new(false));
        let (mut stream, go) = driven(dropped.clone());
        assert!(matches!(stream.next().await, Some(TokenEvent::Token { text, .. }) if text == "a"));
        // The producer waits: so does the reader, without blocking anything.
        let waiting = tokio::time::timeout(Duration::from_millis(20), stream.next()).await;
        assert!(waiting.is_err(), "nothing to read while the producer waits");
        go.send(()).unwrap();
        assert!(matches!(stream.next().await, Some(TokenEvent::Token { text, .. }) if text == "b"));
        assert!(
            stream.next().await.is_none(),
            "the producer ended: so does the stream"
        );
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn dropping_or_cancelling_a_driven_stream_drops_its_producer() {
        let dropped = Arc::new(AtomicBool::new(false));
        let (mut stream, _go) = driven(dropped.clone());
        assert!(stream.next().await.is_some());
        assert!(!dropped.load(Ordering::SeqCst));
        drop(stream);
        assert!(
            dropped.load(Ordering::SeqCst),
            "the client left: the work stops"
        );

        let dropped = Arc::new(AtomicBool::new(false));
        let (mut stream, _go) = driven(dropped.clone());
        assert!(stream.next().await.is_some());
        stream.cancel();
        assert!(dropped.load(Ordering::SeqCst));
        assert!(stream.next().await.is_none());
    }
}

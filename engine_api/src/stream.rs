//! The receiving end of a submission: an unbounded channel of [`TokenEvent`]s. Dropping it is
//! cancellation: the engine notices at its next step and frees the sequence.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::events::{Completion, Failure, Logprobs, Refusal, TokenEvent};

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
    pub async fn collect(mut self) -> std::result::Result<CollectedOutput, Unfinished> {
        let mut out = Collecting::default();
        while let Some(event) = self.next().await {
            if let Some(done) = Self::fold(&mut out, event) {
                return done;
            }
        }
        Err(Unfinished::Ended)
    }

    /// Reads the stream to its end, blocking the current thread.
    pub fn blocking_collect(mut self) -> std::result::Result<CollectedOutput, Unfinished> {
        let mut out = Collecting::default();
        while let Some(event) = self.blocking_next() {
            if let Some(done) = Self::fold(&mut out, event) {
                return done;
            }
        }
        Err(Unfinished::Ended)
    }

    fn fold(
        out: &mut Collecting,
        event: TokenEvent,
    ) -> Option<std::result::Result<CollectedOutput, Unfinished>> {
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
            TokenEvent::Failed(failure) => Some(Err(Unfinished::Failed(failure))),
            TokenEvent::Unavailable(reason) | TokenEvent::Declined(reason) => {
                Some(Err(Unfinished::Unavailable(reason)))
            }
            TokenEvent::Refused(refusal) => Some(Err(Unfinished::Refused(refusal))),
        }
    }
}

/// Why a collected stream did not finish its request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unfinished {
    /// It failed after it started.
    #[error("{0}")]
    Failed(Failure),
    /// No replica could take it (or an upstream declined it).
    #[error("{0}")]
    Unavailable(String),
    /// It was refused as the request's own fault.
    #[error("{}", .0.message)]
    Refused(Refusal),
    /// The stream ended without a last event.
    #[error("engine stopped without finishing the request")]
    Ended,
}

/// What [`TokenStream::collect`] has read so far.
#[derive(Default)]
struct Collecting {
    ids: Vec<u32>,
    text: String,
    logprobs: Vec<Logprobs>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

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

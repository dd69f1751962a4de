//! One request's call upstream: send, wait for the head, relay the stream's tokens as engine
//! events (or fail retryably while nothing was generated), and count the outcome.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;

use super::client::{describe, RemoteClient};
use super::sse::SseDecoder;
use super::wire::{error_message, read_chunk, refusal};
use super::RemoteOptions;
use engine_api::{
    Completion, EngineCounters, Failure, FailureKind, RequestTiming, TokenEvent, Usage,
    REMOTE_TOKEN_ID,
};

/// One request on its way upstream and back.
pub(super) struct UpstreamCall {
    pub(super) client: RemoteClient,
    pub(super) options: RemoteOptions,
    pub(super) counters: std::sync::Arc<EngineCounters>,
    pub(super) events: mpsc::UnboundedSender<TokenEvent>,
    pub(super) prompt_estimate: usize,
}

/// How a call ended, for the counters.
enum Outcome {
    Finished,
    Cancelled,
    Failed,
}

/// Counts a call's end however it comes: run to its outcome, or dropped on the way (its
/// reader went away: cancelled).
struct Settle {
    counters: std::sync::Arc<EngineCounters>,
    generated: usize,
    outcome: Outcome,
}

impl Drop for Settle {
    fn drop(&mut self) {
        let c = &self.counters;
        c.active.fetch_sub(1, Ordering::Relaxed);
        c.generated_tokens
            .fetch_add(self.generated as u64, Ordering::Relaxed);
        let counter = match self.outcome {
            Outcome::Finished => &c.finished,
            Outcome::Cancelled => &c.cancelled,
            Outcome::Failed => &c.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl UpstreamCall {
    /// The call, as the producer of its [`engine_api::TokenStream`] (driven by the stream's reader:
    /// dropping the stream drops the call and its connection).
    pub(super) async fn run(self, request: Request<Full<Bytes>>) {
        let mut settle = Settle {
            counters: self.counters.clone(),
            generated: 0,
            outcome: Outcome::Cancelled,
        };
        settle.outcome = self.exchange(request, &mut settle.generated).await;
    }

    /// Sends the terminal error event: retryable while nothing was generated.
    fn fail(&self, generated: usize, message: String) -> Outcome {
        let event = match generated {
            0 => TokenEvent::Unavailable(message),
            _ => TokenEvent::Failed(Failure::new(FailureKind::Upstream, message)),
        };
        let _ = self.events.send(event);
        Outcome::Failed
    }

    async fn exchange(&self, request: Request<Full<Bytes>>, generated: &mut usize) -> Outcome {
        let started = Instant::now();
        let base = &self.options.base_url;
        let response = tokio::time::timeout(
            self.options.response_timeout,
            self.client.http.request(request),
        )
        .await;
        let response = match response {
            Err(_) => {
                let timeout = self.options.response_timeout;
                return self.fail(
                    0,
                    format!("upstream {base} did not answer within {timeout:?}"),
                );
            }
            Ok(Err(e)) => {
                return self.fail(0, format!("cannot reach upstream {base}: {}", describe(e)))
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            let body =
                tokio::time::timeout(self.options.idle_timeout, response.into_body().collect())
                    .await
                    .ok()
                    .and_then(|b| b.ok())
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
            let message = format!(
                "upstream {base} answered {status}: {}",
                error_message(&body)
            );
            // Server errors: the replica failed; another may well serve it.
            if status.is_server_error() {
                return self.fail(0, message);
            }
            // The request's fault: every replica would say the same. The client gets the
            // upstream's own words (they speak of the request), the log the whole message.
            if matches!(status.as_u16(), 400 | 413 | 422) {
                tracing::debug!(%message, "upstream refused the request");
                let refusal = TokenEvent::Refused(refusal(&body));
                let _ = self.events.send(refusal);
                return Outcome::Failed;
            }
            // Any other 4xx (429: busy; 401, 403, 404: not set up for this model or secret):
            // another replica may serve it, and this one answered, so it has not failed.
            tracing::debug!(%message, "upstream declined the request");
            let _ = self.events.send(TokenEvent::Declined(message));
            return Outcome::Failed;
        }

        let mut body = response.into_body();
        let mut events = SseDecoder::new();
        let mut first_token = None;
        let mut finish_reason = None;
        let mut usage = None;
        // One timer for the whole stream, moved only when it fires (a read only notes the
        // time): a timer per chunk would cost a timer-wheel entry per token.
        let idle = self.options.idle_timeout;
        let silence = tokio::time::sleep(idle);
        tokio::pin!(silence);
        let mut last_read = Instant::now();
        'stream: loop {
            // Every event complete in what was read, then a read.
            loop {
                let data = match events.next_event() {
                    Ok(Some(data)) => data,
                    Ok(None) => break,
                    Err(e) => {
                        return self.fail(
                            *generated,
                            format!("reading the stream of upstream {base}: {e}"),
                        )
                    }
                };
                if data == "[DONE]" {
                    break 'stream;
                }
                let chunk = match read_chunk(data) {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        return self.fail(
                            *generated,
                            format!("unreadable chunk from upstream {base}: {e}"),
                        )
                    }
                };
                if let Some(error) = chunk.error {
                    return self.fail(*generated, format!("upstream {base}: {error}"));
                }
                if chunk.usage.is_some() {
                    usage = chunk.usage;
                }
                if let Some(text) = chunk.token {
                    first_token.get_or_insert_with(|| started.elapsed());
                    *generated += 1;
                    let token = TokenEvent::Token {
                        id: REMOTE_TOKEN_ID,
                        text,
                        logprobs: chunk.logprobs,
                    };
                    if self.events.send(token).is_err() {
                        return Outcome::Cancelled;
                    }
                }
                if chunk.finish_reason.is_some() {
                    finish_reason = chunk.finish_reason;
                }
            }
            let read = tokio::select! {
                biased;
                frame = body.frame() => Ok(frame),
                () = &mut silence => Err(()),
            };
            match read {
                Err(()) if last_read.elapsed() < idle => {
                    silence.as_mut().reset((last_read + idle).into());
                }
                Err(()) => {
                    return self.fail(
                        *generated,
                        format!("upstream {base} sent nothing for {idle:?}"),
                    );
                }
                Ok(None) => {
                    return self.fail(
                        *generated,
                        format!("upstream {base} closed the stream before it finished"),
                    )
                }
                Ok(Some(Err(e))) => {
                    return self.fail(
                        *generated,
                        format!("reading the stream of upstream {base}: {e}"),
                    )
                }
                Ok(Some(Ok(frame))) => {
                    last_read = Instant::now();
                    if let Some(bytes) = frame.data_ref() {
                        events.push(bytes);
                    }
                }
            }
        }
        let Some(finish_reason) = finish_reason else {
            return self.fail(
                *generated,
                format!("upstream {base} ended the stream without a finish reason"),
            );
        };
        let usage = usage.unwrap_or(Usage {
            prompt_tokens: self.prompt_estimate,
            completion_tokens: *generated,
            cached_tokens: 0,
            prompt_estimated: true,
        });
        self.counters
            .prompt_tokens
            .fetch_add(usage.prompt_tokens as u64, Ordering::Relaxed);
        let completion = Completion {
            finish_reason,
            usage,
            timing: RequestTiming {
                time_to_first_token: first_token.unwrap_or_default(),
                decode_steps: generated.saturating_sub(1),
                ..RequestTiming::default()
            },
        };
        let _ = self.events.send(TokenEvent::Finished(completion));
        Outcome::Finished
    }
}

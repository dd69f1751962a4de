//! What a token stream carries: tokens with their log probabilities, and how the request ended
//! (finished, failed, unavailable, declined or refused as the request's own fault).

use std::time::Duration;

use crate::error::EngineError;

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
    Failed(Failure),
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

/// Why a request that had started failed: the kind of failure, and its account in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// What failed.
    pub kind: FailureKind,
    /// What happened, for logs and the client's error message.
    pub message: String,
}

/// What failed under a request that had started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The model failed in a step the request was in (a kernel, a device, a tensor operation).
    Execution,
    /// The engine stopped (its thread is gone) before the request finished.
    Stopped,
    /// An upstream broke off or sent what cannot be read.
    Upstream,
    /// The replica went silent past its stall timeout.
    Stalled,
    /// The replica could not keep the request, after some of it was sent.
    Unavailable,
}

impl Failure {
    /// A failure of `kind`, told as `message`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// How an engine error that is not the request's own fault ends a started request.
    pub fn of(error: &EngineError) -> Self {
        let kind = match error {
            EngineError::EngineStopped => FailureKind::Stopped,
            _ => FailureKind::Execution,
        };
        Self::new(kind, error.to_string())
    }
}

/// The token id of a token that came from a remote engine, which reports text, not ids.
pub const REMOTE_TOKEN_ID: u32 = u32::MAX;

#[cfg(test)]
mod tests {
    use super::*;

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
}

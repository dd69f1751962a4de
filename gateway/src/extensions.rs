//! What the layers and handlers tell each other about one request, as typed request and response
//! extensions. Defined here, below every layer and handler, so that no two of them import each
//! other: each layer reads what an outer one learned and leaves what it learned for the next.
//!
//! | extension | written by | read by |
//! |---|---|---|
//! | [`ClientRequestId`] (request) | client request id | trace span, usage accounts |
//! | [`Caller`] (request) | authentication | request metrics, rate-limit headers, admission, handlers |
//! | [`RequestCost`] (request) | the generation preamble | admission |
//! | [`Handoff<Admission>`] (request) | admission | the generation handler |
//! | [`RateLimitSnapshot`] (response) | admission, a 429 | rate-limit headers |
//! | [`ServedModel`] (response) | the generation preamble | request metrics |
//! | [`AccessLogWritten`] (response) | the generation handler | access log |
//! | [`Polled`] (response) | polled endpoints | access log |

use std::sync::{Arc, Mutex};

use policies::{KeyId, RateLimitStatus, TenantSpec};

/// Who is calling. Never holds the key itself, only its non-secret id.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The tenant the key belongs to (a snapshot: a reload does not change a running request;
    /// shared, so that passing the caller on copies nothing).
    pub tenant: Arc<TenantSpec>,
    /// The key's non-secret id.
    pub key_id: KeyId,
}

/// The id a client sent with its request (`x-client-request-id` or `x-request-id`), when usable:
/// its own reference, stored beside the gateway's id, never in its place.
#[derive(Debug, Clone)]
pub struct ClientRequestId(pub Arc<str>);

/// What admitting a generation request costs, in tokens: known once its prompts are rendered
/// and sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCost {
    /// Prompt tokens over every prompt of the request.
    pub prompt_tokens: u64,
    /// Prompt tokens plus `max_tokens` of every prompt: what the tokens-per-minute limit and the
    /// router reserve (`routing::RouteRequest::reserved_tokens`).
    pub reserved_tokens: u64,
    /// The request named no `max_tokens`: with less than `reserved_tokens` left of the day it
    /// may be cut to what is left, down to this many (its prompt and a token per choice).
    pub shortenable_to: Option<u64>,
}

impl RequestCost {
    /// What admission is asked for.
    pub fn ask(&self) -> policies::Ask {
        let ask = policies::Ask::new(self.prompt_tokens, self.reserved_tokens);
        match self.shortenable_to {
            Some(least) => ask.shortenable_to(least),
            None => ask,
        }
    }
}

/// The tenant's limits as of this request, for the `x-ratelimit-*` headers. A response that
/// carries none gets the tenant's current state.
#[derive(Debug, Clone)]
pub struct RateLimitSnapshot(pub RateLimitStatus);

/// The configured model a response served, for the request counter's `model` label. Absent for
/// routes without a model, and for requests naming a model that is not configured (client-chosen
/// strings must not become label values).
#[derive(Debug, Clone)]
pub struct ServedModel(pub String);

/// Marks a response whose access-log line is written when its generation ends (by its usage
/// account, with tokens and timings), so the generic line is skipped.
#[derive(Debug, Clone, Copy)]
pub struct AccessLogWritten;

/// Marks a response whose access-log line goes at debug level: polled endpoints (`/load`, asked
/// by every gateway every few seconds) would drown the requests.
#[derive(Debug, Clone, Copy)]
pub struct Polled;

/// A value handed from a layer to the handler exactly once. Extensions must be `Clone`; the
/// values handed on here (an admission that refunds its reservation when dropped, prepared
/// prompts) must not be duplicated, so they travel in a shared cell that the receiver empties.
/// Whatever nobody takes is dropped with the request.
pub struct Handoff<T>(Arc<Mutex<Option<T>>>);

impl<T> Clone for Handoff<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Handoff<T> {
    /// Wraps `value` for the next stage.
    pub fn new(value: T) -> Self {
        Self(Arc::new(Mutex::new(Some(value))))
    }

    /// The value, to the first caller only.
    pub fn take(&self) -> Option<T> {
        self.0.lock().map(|mut v| v.take()).unwrap_or(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handoff_is_taken_once_across_clones() {
        let handoff = Handoff::new(7);
        let copy = handoff.clone();
        assert_eq!(copy.take(), Some(7));
        assert_eq!(handoff.take(), None);
    }
}

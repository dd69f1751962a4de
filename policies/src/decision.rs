//! What admission is asked and what it answers: the request's [`Ask`] (its tokens, and whether it
//! may be shortened), a refusal's [`Rejection`] and reason, and the limits as they stand
//! ([`RateLimitStatus`], for OpenAI's `x-ratelimit-*` headers; [`DailyUsage`]).

use std::time::Duration;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// `requests_per_minute`.
    RequestsPerMinute,
    /// `tokens_per_minute`.
    TokensPerMinute,
    /// The request alone needs more tokens than the tenant's whole per-minute limit.
    RequestTooLarge,
    /// `max_concurrent`.
    Concurrency,
    /// `daily_tokens`: nothing is left of today's budget.
    DailyBudget,
    /// `daily_tokens`: something is left today, but less than this request's prompt plus
    /// `max_tokens`.
    DailyBudgetShort,
}

impl RejectReason {
    /// The limit's name (a metric label, a log field).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "requests_per_minute",
            Self::TokensPerMinute => "tokens_per_minute",
            Self::RequestTooLarge => "request_too_large",
            Self::Concurrency => "max_concurrent",
            Self::DailyBudget | Self::DailyBudgetShort => "daily_tokens",
        }
    }
}

/// A refusal, with when to retry (`None`: retrying will not help).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Which limit refused.
    pub reason: RejectReason,
    /// When a retry can succeed, if that is known.
    pub retry_after: Option<Duration>,
    /// The limits' state, for the response headers.
    pub status: RateLimitStatus,
}

/// What OpenAI's `x-ratelimit-*` headers report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimitStatus {
    /// Requests per minute, if limited.
    pub requests: Option<LimitState>,
    /// Tokens per minute, if limited.
    pub tokens: Option<LimitState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// One limit's state.
pub struct LimitState {
    /// The limit.
    pub limit: u64,
    /// What is left of it now.
    pub remaining: u64,
    /// Until it is whole again.
    pub reset: Duration,
}

/// Today's usage of one tenant (UTC day).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DailyUsage {
    /// Requests admitted today.
    pub requests: u64,
    /// Their prompt tokens.
    pub prompt_tokens: u64,
    /// Their completion tokens.
    pub completion_tokens: u64,
    /// Requests refused today.
    pub rejections: u64,
}

impl DailyUsage {
    /// Prompt plus completion tokens.
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// What a request asks of its tenant's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// Its prompt tokens (billed once it starts).
    pub prompt_tokens: u64,
    /// Prompt plus the most it may generate: what the per-minute and daily token limits
    /// reserve.
    pub reserve_tokens: u64,
    /// The request named no `max_tokens`: where less than `reserve_tokens` is left of the
    /// day, it is admitted with what is left (and generates until then) instead of refused,
    /// as long as at least this many tokens are left (its prompt and one token per choice).
    pub shortenable_to: Option<u64>,
}

impl Ask {
    /// A request of `prompt_tokens` that may use `reserve_tokens` in all.
    pub fn new(prompt_tokens: u64, reserve_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            reserve_tokens,
            shortenable_to: None,
        }
    }

    /// The same request, cut to what is left of the day rather than refused: it runs with
    /// as few as its prompt plus one token.
    pub fn shortenable(self) -> Self {
        self.shortenable_to(self.prompt_tokens + 1)
    }

    /// The same request, cut to what is left of the day rather than refused while at least
    /// `least` tokens are (its prompt and one token for each of its choices).
    pub fn shortenable_to(self, least: u64) -> Self {
        Self {
            shortenable_to: Some(least.max(self.prompt_tokens + 1)),
            ..self
        }
    }

    /// The tokens granted against `left` of the day's budget, or why not: nothing left
    /// (not even the prompt), or too little for the request.
    pub fn against_day(&self, left: u64) -> Result<u64, RejectReason> {
        if left <= self.prompt_tokens {
            return Err(RejectReason::DailyBudget);
        }
        match self.shortenable_to {
            _ if self.reserve_tokens <= left => Ok(self.reserve_tokens),
            Some(least) if least <= left => Ok(left),
            _ => Err(RejectReason::DailyBudgetShort),
        }
    }
}

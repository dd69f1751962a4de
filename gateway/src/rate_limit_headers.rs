//! OpenAI's `x-ratelimit-*` headers and `Retry-After`.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use policies::{LimitState, RateLimitStatus};
use std::time::Duration;

pub const LIMIT_REQUESTS: &str = "x-ratelimit-limit-requests";
pub const LIMIT_TOKENS: &str = "x-ratelimit-limit-tokens";

/// OpenAI's duration format: `1s`, `6m0s`, `20ms`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    let minutes = (secs / 60.0).floor() as u64;
    let rest = secs - minutes as f64 * 60.0;
    if minutes > 0 {
        format!("{minutes}m{}s", rest.round() as u64)
    } else {
        format!("{}s", (rest * 1000.0).round() / 1000.0)
    }
}

fn put(headers: &mut HeaderMap, kind: &str, state: &LimitState) {
    let mut set = |name: String, value: String| {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(name, value);
        }
    };
    set(format!("x-ratelimit-limit-{kind}"), state.limit.to_string());
    set(
        format!("x-ratelimit-remaining-{kind}"),
        state.remaining.to_string(),
    );
    set(
        format!("x-ratelimit-reset-{kind}"),
        format_reset(state.reset),
    );
}

/// Adds the headers of every configured limit (unlimited tenants get none).
pub fn insert(headers: &mut HeaderMap, status: &RateLimitStatus) {
    if let Some(requests) = &status.requests {
        put(headers, "requests", requests);
    }
    if let Some(tokens) = &status.tokens {
        put(headers, "tokens", tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_openais_format() {
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn writes_both_families() {
        let mut h = HeaderMap::new();
        let state = LimitState {
            limit: 60,
            remaining: 59,
            reset: Duration::from_secs(1),
        };
        insert(
            &mut h,
            &RateLimitStatus {
                requests: Some(state),
                tokens: None,
            },
        );
        assert_eq!(h["x-ratelimit-limit-requests"], "60");
        assert_eq!(h["x-ratelimit-remaining-requests"], "59");
        assert_eq!(h["x-ratelimit-reset-requests"], "1s");
        assert!(!h.contains_key("x-ratelimit-limit-tokens"));
    }
}

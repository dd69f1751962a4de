//! OpenAI's `x-ratelimit-*` headers on every API response: the limits as admission saw them
//! when it ran (a [`RateLimitSnapshot`] in the response, also on a 429), else the tenant's
//! current state. The only writer of these headers (`Retry-After` belongs to the 429 itself,
//! `error.rs`).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use policies::{LimitState, QuotaStore, RateLimitStatus, TenantSpec};
use std::time::Duration;

use super::around::{Around, AroundLayer};
use crate::extensions::{Caller, RateLimitSnapshot};
use crate::state::AppState;

/// Writes the headers of the caller's limits on its response.
pub fn layer(state: &AppState) -> AroundLayer<RateLimitHeaders> {
    AroundLayer::new(RateLimitHeaders {
        quotas: state.quotas.clone(),
    })
}

/// The rate-limit headers' layer.
#[derive(Clone)]
pub struct RateLimitHeaders {
    quotas: Arc<dyn QuotaStore>,
}

impl Around for RateLimitHeaders {
    type Carry = Option<(Arc<dyn QuotaStore>, Arc<TenantSpec>)>;

    fn before(&self, request: &mut Request) -> Result<Self::Carry, Response> {
        let caller = request.extensions().get::<Caller>();
        Ok(caller.map(|caller| (self.quotas.clone(), caller.tenant.clone())))
    }

    fn after(carry: Self::Carry, response: &mut Response) {
        let status = match response.extensions_mut().remove::<RateLimitSnapshot>() {
            Some(snapshot) => snapshot.0,
            None => match carry {
                Some((quotas, tenant)) => quotas.status(&tenant),
                None => return,
            },
        };
        insert(response.headers_mut(), &status);
    }
}

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

/// One kind of limit's headers: its limit, what remains, when it is whole again. Names made
/// once (they go on every response).
struct LimitHeaders {
    limit: HeaderName,
    remaining: HeaderName,
    reset: HeaderName,
}

const REQUESTS: LimitHeaders = LimitHeaders {
    limit: HeaderName::from_static("x-ratelimit-limit-requests"),
    remaining: HeaderName::from_static("x-ratelimit-remaining-requests"),
    reset: HeaderName::from_static("x-ratelimit-reset-requests"),
};

const TOKENS: LimitHeaders = LimitHeaders {
    limit: HeaderName::from_static("x-ratelimit-limit-tokens"),
    remaining: HeaderName::from_static("x-ratelimit-remaining-tokens"),
    reset: HeaderName::from_static("x-ratelimit-reset-tokens"),
};

fn put(headers: &mut HeaderMap, names: LimitHeaders, state: &LimitState) {
    headers.insert(names.limit, HeaderValue::from(state.limit));
    headers.insert(names.remaining, HeaderValue::from(state.remaining));
    if let Ok(reset) = HeaderValue::try_from(format_reset(state.reset)) {
        headers.insert(names.reset, reset);
    }
}

/// Adds the headers of every configured limit (unlimited tenants get none).
fn insert(headers: &mut HeaderMap, status: &RateLimitStatus) {
    // Room for all six at once, not a regrowth of the map on the way.
    headers.reserve(6);
    if let Some(requests) = &status.requests {
        put(headers, REQUESTS, requests);
    }
    if let Some(tokens) = &status.tokens {
        put(headers, TOKENS, tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use tower::{Layer, ServiceExt};

    async fn plain(_: Request) -> Result<Response, std::convert::Infallible> {
        Ok(StatusCode::OK.into_response())
    }

    async fn with_snapshot(_: Request) -> Result<Response, std::convert::Infallible> {
        let mut response = StatusCode::OK.into_response();
        response
            .extensions_mut()
            .insert(RateLimitSnapshot(RateLimitStatus {
                requests: Some(LimitState {
                    limit: 7,
                    remaining: 3,
                    reset: Duration::from_secs(2),
                }),
                tokens: None,
            }));
        Ok(response)
    }

    #[tokio::test]
    async fn the_current_state_without_a_snapshot_and_the_snapshot_with_one() {
        let state = testing::state(|t| t.requests_per_minute = Some(60));
        let caller = testing::caller(&state);
        let mut request = testing::request(None);
        request.extensions_mut().insert(caller.clone());
        let response = layer(&state)
            .layer(tower::service_fn(plain))
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.headers()["x-ratelimit-limit-requests"], "60");
        assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "60");

        let mut request = testing::request(None);
        request.extensions_mut().insert(caller);
        let response = layer(&state)
            .layer(tower::service_fn(with_snapshot))
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.headers()["x-ratelimit-limit-requests"], "7");
        assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "3");
        assert!(response.extensions().get::<RateLimitSnapshot>().is_none());
    }

    #[tokio::test]
    async fn no_headers_without_a_caller() {
        let state = testing::state(|t| t.requests_per_minute = Some(60));
        let response = layer(&state)
            .layer(tower::service_fn(plain))
            .oneshot(testing::request(None))
            .await
            .unwrap();
        assert!(!response
            .headers()
            .contains_key("x-ratelimit-limit-requests"));
    }

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

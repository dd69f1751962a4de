//! Quota admission: a generation request whose cost is known ([`RequestCost`], left by the
//! generation preamble once its prompts are sized) is admitted against the caller's tenant
//! quota (requests and tokens per minute, concurrency, daily budget) or refused with a 429.
//!
//! The [`Admission`] goes on to the handler in a [`Handoff`]: it holds the reservation and the
//! concurrency slot, is settled with the real token count when the generation ends, and refunds
//! itself if it is dropped unused (a request that fails before it generates anything). The
//! limits as admission saw them go back on the response ([`RateLimitSnapshot`]).

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use policies::Admission;

use super::around::{Around, AroundLayer};
use crate::error::ApiError;
use crate::extensions::{Caller, Handoff, RateLimitSnapshot, RequestCost};
use crate::state::AppState;

/// Admits the request or answers 429. Requests without a cost (not generations) pass.
pub fn layer(state: &AppState) -> AroundLayer<Admit> {
    AroundLayer::new(Admit {
        state: state.clone(),
    })
}

/// The admission layer.
#[derive(Clone)]
pub struct Admit {
    state: AppState,
}

impl Around for Admit {
    type Carry = Option<RateLimitSnapshot>;

    fn before(&self, request: &mut Request) -> Result<Self::Carry, Response> {
        let extensions = request.extensions();
        let (Some(caller), Some(&cost)) =
            (extensions.get::<Caller>(), extensions.get::<RequestCost>())
        else {
            return Ok(None);
        };
        let state = &self.state;
        let admitted = tracing::info_span!(
            "admission",
            prompt_tokens = cost.prompt_tokens,
            reserved_tokens = cost.reserved_tokens
        )
        .in_scope(|| {
            state
                .quotas
                .admit(&caller.tenant, cost.prompt_tokens, cost.reserved_tokens)
        });
        match admitted {
            Err(rejection) => {
                let reason = rejection.reason.as_str();
                tracing::info!(reason, "request refused by quota");
                state.requests.count_rejection(&caller.tenant.id, reason);
                Err(ApiError::rate_limited(&rejection).into_response())
            }
            Ok(admission) => {
                let snapshot = RateLimitSnapshot(admission.status.clone());
                request
                    .extensions_mut()
                    .insert(Handoff::<Admission>::new(admission));
                Ok(Some(snapshot))
            }
        }
    }

    fn after(carry: Self::Carry, response: &mut Response) {
        if let Some(snapshot) = carry {
            if response.extensions().get::<RateLimitSnapshot>().is_none() {
                response.extensions_mut().insert(snapshot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing;
    use axum::http::StatusCode;
    use tower::{Layer, ServiceExt};

    /// The stub handler: 200 if it received an admission, 500 if not.
    async fn takes_admission(request: Request) -> Result<Response, std::convert::Infallible> {
        let admitted = request
            .extensions()
            .get::<Handoff<Admission>>()
            .and_then(Handoff::take)
            .is_some();
        Ok(match admitted {
            true => StatusCode::OK.into_response(),
            false => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        })
    }

    fn generation(state: &AppState, reserved_tokens: u64) -> Request {
        let mut request = testing::request(None);
        request.extensions_mut().insert(testing::caller(state));
        request.extensions_mut().insert(RequestCost {
            prompt_tokens: 4,
            reserved_tokens,
        });
        request
    }

    #[tokio::test]
    async fn admits_within_the_quota_and_refuses_beyond_it() {
        let state = testing::state(|t| t.requests_per_minute = Some(1));
        let service = layer(&state).layer(tower::service_fn(takes_admission));
        let first = service
            .clone()
            .oneshot(generation(&state, 20))
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        let snapshot = first.extensions().get::<RateLimitSnapshot>().unwrap();
        assert_eq!(snapshot.0.requests.as_ref().unwrap().remaining, 0);

        let second = service.oneshot(generation(&state, 20)).await.unwrap();
        assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(second.headers().contains_key("retry-after"));
        assert!(second.extensions().get::<RateLimitSnapshot>().is_some());
        let body = testing::body_text(second).await;
        assert!(body.contains("rate_limit_exceeded"), "{body}");
        let metrics = crate::metrics::render(&state.metrics);
        assert!(
            metrics.contains("reason=\"requests_per_minute\"} 1"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn a_request_larger_than_the_token_limit_is_refused() {
        let state = testing::state(|t| t.tokens_per_minute = Some(100));
        let service = layer(&state).layer(tower::service_fn(takes_admission));
        let response = service.oneshot(generation(&state, 101)).await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test]
    async fn requests_without_a_cost_pass_unadmitted() {
        let state = testing::state(|t| t.requests_per_minute = Some(1));
        let service = layer(&state).layer(tower::service_fn(|_: Request| async {
            Ok::<_, std::convert::Infallible>(StatusCode::OK.into_response())
        }));
        for _ in 0..3 {
            let response = service
                .clone()
                .oneshot(testing::request(None))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
    }

    #[tokio::test]
    async fn an_admission_nobody_takes_is_refunded() {
        let state = testing::state(|t| t.max_concurrent = Some(1));
        // A handler that fails before it takes the admission: the slot comes back.
        let service = layer(&state).layer(tower::service_fn(|_: Request| async {
            Ok::<_, std::convert::Infallible>(StatusCode::SERVICE_UNAVAILABLE.into_response())
        }));
        for _ in 0..3 {
            let response = service
                .clone()
                .oneshot(generation(&state, 10))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}

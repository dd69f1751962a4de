//! Quota admission: a generation request whose cost is known ([`RequestCost`], left by the
//! generation preamble once its prompts are sized) is admitted against the caller's tenant
//! quota (requests and tokens per minute, concurrency, daily budget) or refused with a 429
//! (a 503 when a shared quota store is unavailable and set to `fail_closed`).
//!
//! The [`Admission`] goes on to the handler in a [`Handoff`]: it holds the reservation and the
//! concurrency slot, is settled with the real token count when the generation ends, and refunds
//! itself if it is dropped unused (a request that fails before it generates anything). The
//! limits as admission saw them go back on the response ([`RateLimitSnapshot`]).
//!
//! The in-process store decides at once, and the request goes on without a boxed future; a
//! shared store (Redis) answers after a round trip, awaited in a boxed future (the round trip
//! costs far more than the box).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use policies::{Admission, Admitting, Refusal, TenantSpec};
use tower::{Layer, Service};

use crate::error::ApiError;
use crate::extensions::{Caller, Handoff, RateLimitSnapshot, RequestCost};
use crate::state::AppState;

/// Admits the request or answers 429. Requests without a cost (not generations) pass.
pub fn layer(state: &AppState) -> AdmissionLayer {
    AdmissionLayer {
        state: state.clone(),
    }
}

/// The admission layer.
#[derive(Clone)]
pub struct AdmissionLayer {
    state: AppState,
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admit {
            state: self.state.clone(),
            inner,
        }
    }
}

/// The admission service.
#[derive(Clone)]
pub struct Admit<S> {
    state: AppState,
    inner: S,
}

/// The decision on a request: go on (with the snapshot for the response) or answer now.
// The refusal is a whole `Response`, moved once (as in `Around::before`).
#[allow(clippy::result_large_err)]
fn decide(
    state: &AppState,
    tenant: &TenantSpec,
    admitted: Result<Admission, Refusal>,
    request: &mut Request,
) -> Result<RateLimitSnapshot, Response> {
    match admitted {
        Err(Refusal::Limited(rejection)) => {
            let reason = rejection.reason.as_str();
            tracing::info!(reason, "request refused by quota");
            state.requests.count_rejection(&tenant.id, reason);
            Err(ApiError::rate_limited(&rejection).into_response())
        }
        Err(Refusal::Unavailable { retry_after }) => {
            tracing::warn!("request refused: the quota store is unavailable (fail_closed)");
            state
                .requests
                .count_rejection(&tenant.id, "quota_store_unavailable");
            Err(ApiError::quota_store_unavailable(retry_after).into_response())
        }
        Ok(admission) => {
            let snapshot = RateLimitSnapshot(admission.status.clone());
            request
                .extensions_mut()
                .insert(Handoff::<Admission>::new(admission));
            Ok(snapshot)
        }
    }
}

/// The snapshot goes on the response unless a layer inside left a newer one.
fn attach(snapshot: Option<RateLimitSnapshot>, response: &mut Response) {
    if let Some(snapshot) = snapshot {
        if response.extensions().get::<RateLimitSnapshot>().is_none() {
            response.extensions_mut().insert(snapshot);
        }
    }
}

impl<S> Service<Request> for Admit<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = AdmitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let extensions = request.extensions();
        let (Some(caller), Some(&cost)) =
            (extensions.get::<Caller>(), extensions.get::<RequestCost>())
        else {
            return AdmitFuture::Inner {
                future: self.inner.call(request),
                snapshot: None,
            };
        };
        // The tenant alone (a shared pointer, no copy): the request's extensions are amended
        // below while it is in use.
        let tenant = caller.tenant.clone();
        let span = tracing::info_span!(
            "admission",
            prompt_tokens = cost.prompt_tokens,
            reserved_tokens = cost.reserved_tokens
        );
        let admitting = span.in_scope(|| self.state.quotas.admit(&tenant, cost.ask()));
        match admitting {
            Admitting::Decided(admitted) => {
                match decide(&self.state, &tenant, admitted, &mut request) {
                    Ok(snapshot) => AdmitFuture::Inner {
                        future: self.inner.call(request),
                        snapshot: Some(snapshot),
                    },
                    Err(response) => AdmitFuture::Answered {
                        response: Some(response),
                    },
                }
            }
            Admitting::Pending(admitting) => {
                // The service that was made ready goes with the request; a clone stays.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let state = self.state.clone();
                AdmitFuture::Waiting {
                    future: Box::pin(async move {
                        let admitted = tracing::Instrument::instrument(admitting, span).await;
                        match decide(&state, &tenant, admitted, &mut request) {
                            Ok(snapshot) => {
                                let Ok(mut response) = inner.call(request).await;
                                attach(Some(snapshot), &mut response);
                                Ok(response)
                            }
                            Err(response) => Ok(response),
                        }
                    }),
                }
            }
        }
    }
}

/// A boxed response future: the path through a shared store.
type BoxedResponse = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

pin_project! {
    /// The response future of [`Admit`]. Fields: the inner `future` with the `snapshot` of
    /// the limits for its response; the refusal `response`; the boxed `future` of admission
    /// through a shared store, then the inner service.
    #[project = AdmitProjection]
    #[allow(missing_docs)]
    pub enum AdmitFuture<F> {
        /// Admitted at once (or not a generation): the inner service's response.
        Inner { #[pin] future: F, snapshot: Option<RateLimitSnapshot> },
        /// Refused at once.
        Answered { response: Option<Response> },
        /// Waiting on the shared store, then on the inner service.
        Waiting { future: BoxedResponse },
    }
}

impl<F> Future for AdmitFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AdmitProjection::Inner { future, snapshot } => {
                let Ok(mut response) = std::task::ready!(future.poll(cx));
                attach(snapshot.take(), &mut response);
                Poll::Ready(Ok(response))
            }
            AdmitProjection::Answered { response } => Poll::Ready(Ok(response
                .take()
                .expect("an answered future is not polled again"))),
            AdmitProjection::Waiting { future } => future.as_mut().poll(cx),
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
            shortenable_to: None,
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

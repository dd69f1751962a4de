//! The request timeout: a response whose head has not started within `[server]
//! request_timeout_secs` becomes a 504 in OpenAI's error format. A stream that has started is
//! not cut (its length is bounded by `max_tokens`, and a client that gives up hangs up).

use std::future::Ready;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::BoxError;
use tower::layer::util::{Identity, Stack};
use tower::timeout::TimeoutLayer;
use tower::ServiceBuilder;

use crate::error::ApiError;

/// The layer type: the timeout, and the conversion of its error into a response.
pub type RequestTimeoutLayer = ServiceBuilder<
    Stack<TimeoutLayer, Stack<HandleErrorLayer<fn(BoxError) -> Ready<ApiError>, ()>, Identity>>,
>;

/// A timeout of `limit` until the response head.
pub fn layer(limit: Duration) -> RequestTimeoutLayer {
    ServiceBuilder::new()
        .layer(HandleErrorLayer::new(
            into_api_error as fn(BoxError) -> Ready<ApiError>,
        ))
        .layer(TimeoutLayer::new(limit))
}

fn into_api_error(err: BoxError) -> Ready<ApiError> {
    std::future::ready(if err.is::<tower::timeout::error::Elapsed>() {
        ApiError::timeout()
    } else {
        ApiError::internal(format!("unhandled middleware error: {err}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::response::{IntoResponse, Response};
    use std::convert::Infallible;
    use tower::{Service, ServiceExt};

    async fn slow(_: Request<Body>) -> Result<Response, Infallible> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(StatusCode::OK.into_response())
    }

    async fn quick(_: Request<Body>) -> Result<Response, Infallible> {
        Ok(StatusCode::OK.into_response())
    }

    #[tokio::test]
    async fn a_late_response_becomes_a_504_with_an_openai_body() {
        let mut service = layer(Duration::from_millis(50)).service(tower::service_fn(slow));
        let response = service
            .ready()
            .await
            .unwrap()
            .call(Request::new(Body::empty()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "timeout");
    }

    #[tokio::test]
    async fn a_prompt_response_passes() {
        let service = layer(Duration::from_secs(5)).service(tower::service_fn(quick));
        let response = service.oneshot(Request::new(Body::empty())).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

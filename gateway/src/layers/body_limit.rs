//! The request-body size limit (`[server] max_body_bytes`): 413 in OpenAI's error format.
//!
//! A body that announces a larger `Content-Length` is refused here, before it is read. Any other
//! body is capped while it is read (a chunked body has no length to check up front): the layer
//! wraps it in `http_body_util::Limited`, and the JSON reader (`openai::json::read_json`) turns
//! the overflow into the same 413.

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::response::{IntoResponse, Response};
use http_body_util::Limited;

use super::around::{Around, AroundLayer};
use crate::error::ApiError;

/// Refuses or caps request bodies over `max_bytes`; uploads to the paths of `uploads`
/// (`POST /v1/files`, `POST /admin/adapters`) over their own limits.
pub fn layer(max_bytes: usize, uploads: Vec<(&'static str, usize)>) -> AroundLayer<BodyLimit> {
    AroundLayer::new(BodyLimit {
        max_bytes,
        uploads: uploads.into(),
    })
}

/// The body-limit layer.
#[derive(Clone)]
pub struct BodyLimit {
    max_bytes: usize,
    uploads: std::sync::Arc<[(&'static str, usize)]>,
}

impl Around for BodyLimit {
    type Carry = ();

    fn before(&self, request: &mut Request) -> Result<(), Response> {
        let path = request.uri().path();
        let limit = self
            .uploads
            .iter()
            .find(|(upload, _)| *upload == path)
            .map_or(self.max_bytes, |&(_, limit)| limit);
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(ApiError::payload_too_large(limit).into_response());
        }
        // Bodyless requests (GETs) pass as they are.
        if !request.body().is_end_stream() {
            let body = std::mem::replace(request.body_mut(), Body::empty());
            *request.body_mut() = Body::new(Limited::new(body, limit));
        }
        Ok(())
    }

    fn after(_: (), _: &mut Response) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing;
    use crate::openai::JsonBody;
    use axum::http::StatusCode;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    fn app() -> Router {
        let state = testing::state_with_edge(|_| {}, |edge| edge.max_body_bytes = 32);
        Router::new()
            .route(
                "/",
                post(|JsonBody(body): JsonBody<serde_json::Value>| async move { body.to_string() }),
            )
            .layer(layer(32, vec![(crate::paths::FILES, 64)]))
            .with_state(state)
    }

    fn post_body(body: Body) -> Request {
        Request::builder()
            .method("POST")
            .uri("/")
            .body(body)
            .unwrap()
    }

    async fn expect_413(response: Response) {
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = testing::body_text(response).await;
        assert!(body.contains("request_too_large"), "{body}");
    }

    #[tokio::test]
    async fn an_announced_length_over_the_limit_is_refused_unread() {
        let mut request = post_body(Body::from(format!("{{\"a\": \"{}\"}}", "x".repeat(64))));
        request
            .headers_mut()
            .insert(CONTENT_LENGTH, axum::http::HeaderValue::from(73u64));
        expect_413(app().oneshot(request).await.unwrap()).await;
    }

    #[tokio::test]
    async fn a_chunked_body_is_cut_off_at_the_limit() {
        let chunks = (0..8).map(|_| Ok::<_, std::io::Error>("{\"a\": \"xxxxxxxx\"}"));
        let body = Body::from_stream(futures::stream::iter(chunks));
        expect_413(app().oneshot(post_body(body)).await.unwrap()).await;
    }

    #[tokio::test]
    async fn a_body_within_the_limit_passes() {
        let response = app()
            .oneshot(post_body(Body::from("{\"a\": 1}")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

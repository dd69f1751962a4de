//! Anthropic's error shape on Anthropic's routes (`/v1/messages...`): every error there, made
//! in OpenAI's shape by whichever layer or handler refused the request (authentication, rate
//! limits, the body limit, a timeout, the route itself), leaves rewritten by
//! [`crate::error::anthropic_error_body`], with its status and headers kept.

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;

use crate::error::anthropic_error_body;

/// The path prefix of the routes that answer in Anthropic's shape.
pub const ANTHROPIC_PREFIX: &str = "/v1/messages";

/// Rewrites the errors of requests to [`ANTHROPIC_PREFIX`] (an `axum::middleware::from_fn`).
pub async fn rewrite(request: Request, next: Next) -> Response {
    let anthropic = request.uri().path().starts_with(ANTHROPIC_PREFIX);
    let response = next.run(request).await;
    if !anthropic || response.status().is_success() || response.status().is_informational() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Error bodies are a few hundred bytes, made by the gateway itself.
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let rewritten = anthropic_error_body(parts.status, &bytes);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(rewritten))
}

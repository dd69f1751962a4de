//! Cross-origin requests from browsers (`[server] cors_origins`). Off by default: with no origin
//! configured no CORS header is sent, and a browser page on another origin cannot read the API.
//! With origins configured, preflights are answered here (before authentication: a browser sends
//! no credentials in a preflight) and responses name the allowed origin.

use axum::http::{header, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// The CORS layer for `origins` (`["*"]`: any origin), or `None` when CORS is off.
/// The origins were checked when the configuration was read.
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("x-request-id"),
                header::HeaderName::from_static("x-client-request-id"),
                header::HeaderName::from_static("traceparent"),
            ])
            // What a browser client may read: the request id and OpenAI's rate-limit headers.
            .expose_headers([
                header::HeaderName::from_static("x-request-id"),
                header::RETRY_AFTER,
                header::HeaderName::from_static("x-ratelimit-limit-requests"),
                header::HeaderName::from_static("x-ratelimit-remaining-requests"),
                header::HeaderName::from_static("x-ratelimit-reset-requests"),
                header::HeaderName::from_static("x-ratelimit-limit-tokens"),
                header::HeaderName::from_static("x-ratelimit-remaining-tokens"),
                header::HeaderName::from_static("x-ratelimit-reset-tokens"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, Response, StatusCode};
    use std::convert::Infallible;
    use tower::{Layer, ServiceExt};

    async fn ok(_: Request<Body>) -> Result<Response<Body>, Infallible> {
        Ok(Response::new(Body::empty()))
    }

    fn preflight(origin: &str) -> Request<Body> {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/v1/chat/completions")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization,content-type,x-api-key,anthropic-version",
            )
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn off_without_origins() {
        assert!(layer(&[]).is_none());
    }

    #[tokio::test]
    async fn a_listed_origin_is_allowed_and_another_is_not() {
        let cors = layer(&["https://chat.example.org".to_string()]).unwrap();
        let service = cors.layer(tower::service_fn(ok));
        let allowed = service
            .clone()
            .oneshot(preflight("https://chat.example.org"))
            .await
            .unwrap();
        assert_eq!(allowed.status(), StatusCode::OK);
        assert_eq!(
            allowed.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://chat.example.org"
        );
        let other = service
            .oneshot(preflight("https://evil.example"))
            .await
            .unwrap();
        assert!(!other
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    }

    #[tokio::test]
    async fn a_star_allows_any_origin() {
        let service = layer(&["*".to_string()])
            .unwrap()
            .layer(tower::service_fn(ok));
        let response = service
            .oneshot(preflight("https://any.example"))
            .await
            .unwrap();
        assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}

//! Authentication: `Authorization: Bearer <key>` (or Anthropic's `x-api-key`) resolved against the stored key digests of the
//! current directory. The resolved [`Caller`] rides in the request's extensions for every later
//! layer and the handler; the span gets `tenant` and `key_id`. On `/admin/*` the key must be an
//! admin key: its [`Actor`] (role, tenant, the client's address) rides instead, each admin key is
//! held to `[server] admin_requests_per_minute`, an auditor may only read, and every response
//! says where tenants come from (`x-gateway-tenant-source: file|store`).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use control_plane::{Actor, Role};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use policies::ApiKey;

use super::around::{Around, AroundLayer};
use crate::error::ApiError;
use crate::extensions::Caller;
use crate::state::AppState;

/// API routes: 401 unless the request carries a tenant's key.
pub fn layer(state: &AppState) -> AroundLayer<Authentication> {
    AroundLayer::new(Authentication {
        state: state.clone(),
    })
}

/// `/admin/*`: 401 without a key or with an unknown one, 403 with a tenant's key, 429 beyond
/// the admin rate limit.
pub fn admin_layer(state: &AppState) -> AroundLayer<AdminAuthentication> {
    let limiter = NonZeroU32::new(state.limits.admin_requests_per_minute)
        .map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n))));
    AroundLayer::new(AdminAuthentication {
        state: state.clone(),
        limiter,
    })
}

/// `/load`, polled by every gateway that routes to an engine-worker: an admin key, not counted
/// against the admin rate limit.
pub fn polled_admin_layer(state: &AppState) -> AroundLayer<AdminAuthentication> {
    AroundLayer::new(AdminAuthentication {
        state: state.clone(),
        limiter: None,
    })
}

/// Resolves a tenant's key.
#[derive(Clone)]
pub struct Authentication {
    state: AppState,
}

impl Around for Authentication {
    type Carry = ();

    fn before(&self, request: &mut Request) -> Result<(), Response> {
        let resolved = tracing::info_span!("authenticate")
            .in_scope(|| {
                let presented =
                    bearer_token(request.headers()).ok_or_else(ApiError::missing_api_key)?;
                self.state
                    .directory()
                    .resolve(&ApiKey::from_plaintext(presented))
                    .ok_or_else(ApiError::invalid_api_key)
            })
            .map_err(IntoResponse::into_response)?;
        let span = tracing::Span::current();
        span.record("tenant", resolved.tenant.id.as_str());
        span.record("key_id", resolved.key_id.as_str());
        if let Some(store) = self.state.store() {
            store.touch(resolved.key_id.as_str());
        }
        request.extensions_mut().insert(Caller::new(resolved));
        Ok(())
    }

    fn after(_: (), _: &mut Response) {}
}

/// Checks an admin key.
#[derive(Clone)]
pub struct AdminAuthentication {
    state: AppState,
    limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
}

/// The response header that says where tenants and keys come from.
pub const TENANT_SOURCE_HEADER: &str = "x-gateway-tenant-source";

impl Around for AdminAuthentication {
    type Carry = &'static str;

    fn before(&self, request: &mut Request) -> Result<&'static str, Response> {
        let directory = self.state.directory();
        let source = directory.source.as_str();
        let with_source = |e: ApiError| {
            let mut response = e.into_response();
            response
                .headers_mut()
                .insert(TENANT_SOURCE_HEADER, HeaderValue::from_static(source));
            response
        };
        let presented = bearer_token(request.headers())
            .ok_or_else(|| with_source(ApiError::missing_api_key()))?;
        let presented = ApiKey::from_plaintext(presented);
        let address = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string());
        let Some(actor) = directory.admin(&presented, address) else {
            return Err(with_source(match directory.resolve(&presented) {
                Some(_) => ApiError::admin_only(),
                None => ApiError::invalid_api_key(),
            }));
        };
        if let Some(limiter) = &self.limiter {
            if let Err(not_until) = limiter.check_key(&actor.key_id) {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                return Err(with_source(ApiError::admin_rate_limited(wait)));
            }
        }
        if actor.role == Role::Auditor && !matches!(*request.method(), Method::GET | Method::HEAD) {
            return Err(with_source(ApiError::forbidden(
                "an auditor key may only read",
            )));
        }
        tracing::Span::current().record("key_id", actor.key_id.as_str());
        request.extensions_mut().insert::<Actor>(actor);
        Ok(source)
    }

    fn after(source: &'static str, response: &mut Response) {
        response
            .headers_mut()
            .insert(TENANT_SOURCE_HEADER, HeaderValue::from_static(source));
    }
}

/// The key a request presents: `Authorization: Bearer <key>` (OpenAI's clients), or
/// `x-api-key: <key>` (Anthropic's), if there is a non-empty one.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        let key = headers.get("x-api-key")?.to_str().ok()?.trim();
        return (!key.is_empty()).then_some(key);
    };
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{self, ADMIN_KEY, OTHER_KEY, TENANT_KEY};
    use axum::http::StatusCode;
    use tower::{Layer, ServiceExt};

    /// The stub handler: answers with the tenant it was told about, or 500 if none.
    async fn echo_tenant(request: Request) -> Result<Response, std::convert::Infallible> {
        Ok(match request.extensions().get::<Caller>() {
            Some(caller) => caller.tenant.id.to_string().into_response(),
            None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        })
    }

    async fn call(admin: bool, key: Option<&str>) -> (StatusCode, String) {
        let state = testing::state(|_| {});
        let response = if admin {
            admin_layer(&state)
                .layer(tower::service_fn(echo_tenant))
                .oneshot(testing::request(key))
                .await
        } else {
            layer(&state)
                .layer(tower::service_fn(echo_tenant))
                .oneshot(testing::request(key))
                .await
        }
        .unwrap();
        let status = response.status();
        (status, testing::body_text(response).await)
    }

    #[tokio::test]
    async fn a_known_key_passes_its_tenant_on() {
        assert_eq!(
            call(false, Some(TENANT_KEY)).await,
            (StatusCode::OK, testing::TENANT.to_string())
        );
    }

    #[tokio::test]
    async fn no_key_or_an_unknown_key_is_a_401_with_its_code() {
        let (status, body) = call(false, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("missing_api_key"), "{body}");
        let (status, body) = call(false, Some(OTHER_KEY)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("invalid_api_key"), "{body}");
    }

    #[tokio::test]
    async fn admin_routes_take_only_admin_keys() {
        assert_eq!(
            call(true, Some(ADMIN_KEY)).await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(call(true, Some(TENANT_KEY)).await.0, StatusCode::FORBIDDEN);
        assert_eq!(
            call(true, Some(OTHER_KEY)).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
}

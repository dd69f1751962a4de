//! Authentication: `Authorization: Bearer <key>` resolved against the stored key digests of the
//! current directory. The resolved [`Caller`] rides in the request's extensions for every later
//! layer and the handler; the span gets `tenant` and `key_id`.

use axum::extract::Request;
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
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

/// `/admin/*`: 401 without a key or with an unknown one, 403 with a tenant's key.
pub fn admin_layer(state: &AppState) -> AroundLayer<AdminAuthentication> {
    AroundLayer::new(AdminAuthentication {
        state: state.clone(),
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
        request.extensions_mut().insert(Caller {
            tenant: resolved.tenant,
            key_id: resolved.key_id,
        });
        Ok(())
    }

    fn after(_: (), _: &mut Response) {}
}

/// Checks an admin key.
#[derive(Clone)]
pub struct AdminAuthentication {
    state: AppState,
}

impl Around for AdminAuthentication {
    type Carry = ();

    fn before(&self, request: &mut Request) -> Result<(), Response> {
        let presented = bearer_token(request.headers())
            .ok_or_else(|| ApiError::missing_api_key().into_response())?;
        let presented = ApiKey::from_plaintext(presented);
        let directory = self.state.directory();
        if directory.is_admin(&presented) {
            Ok(())
        } else if directory.resolve(&presented).is_some() {
            Err(ApiError::admin_only().into_response())
        } else {
            Err(ApiError::invalid_api_key().into_response())
        }
    }

    fn after(_: (), _: &mut Response) {}
}

/// The key of an `Authorization: Bearer <key>` header, if there is a non-empty one.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
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

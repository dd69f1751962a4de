//! Authentication: `Authorization: Bearer <key>` resolved against the tenants' stored key
//! digests. The resolved [`Caller`] travels in the request's extensions.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use policies::{ApiKey, KeyId, TenantSpec};

use crate::accounting::ServedModel;
use crate::error::ApiError;
use crate::state::AppState;

/// Who is calling. Never holds the key itself, only its non-secret id.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantSpec,
    pub key_id: KeyId,
}

/// Middleware: rejects with 401 unless the request carries a known key.
pub async fn require_api_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let resolved = tracing::info_span!("authenticate").in_scope(|| {
        let presented = bearer_token(&request).ok_or_else(ApiError::missing_api_key)?;
        state
            .directory()
            .resolve(&ApiKey::from_plaintext(presented))
            .ok_or_else(ApiError::invalid_api_key)
    })?;
    tracing::Span::current().record("tenant", resolved.tenant.id.as_str());
    tracing::Span::current().record("key_id", resolved.key_id.as_str());
    let tenant = resolved.tenant.clone();
    request.extensions_mut().insert(Caller {
        tenant: resolved.tenant,
        key_id: resolved.key_id,
    });
    let mut response = next.run(request).await;
    // Every response reports the tenant's limits; generations already set them at admission.
    if !response
        .headers()
        .contains_key(crate::rate_limit_headers::LIMIT_REQUESTS)
        && !response
            .headers()
            .contains_key(crate::rate_limit_headers::LIMIT_TOKENS)
    {
        crate::rate_limit_headers::insert(response.headers_mut(), &state.quotas.status(&tenant));
    }
    let model = response
        .extensions()
        .get::<ServedModel>()
        .map_or("", |m| m.0.as_str());
    state
        .requests
        .count_request(tenant.id.as_str(), model, response.status().as_u16());
    Ok(response)
}

/// Middleware for `/admin/*`: 401 without a key or with an unknown one, 403 with a tenant's key.
pub async fn require_admin_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented =
        ApiKey::from_plaintext(bearer_token(&request).ok_or_else(ApiError::missing_api_key)?);
    let directory = state.directory();
    if directory.is_admin(&presented) {
        Ok(next.run(request).await)
    } else if directory.resolve(&presented).is_some() {
        Err(ApiError::admin_only())
    } else {
        Err(ApiError::invalid_api_key())
    }
}

fn bearer_token(request: &Request) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

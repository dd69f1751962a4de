//! Authentication: `Authorization: Bearer <key>` resolved against the tenants' stored key
//! digests. The resolved [`Caller`] travels in the request's extensions.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use policies::{ApiKey, KeyId, TenantSpec};

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
    let presented = bearer_token(&request).ok_or_else(ApiError::missing_api_key)?;
    let resolved = state
        .keys()
        .resolve(&ApiKey::from_plaintext(presented))
        .ok_or_else(ApiError::invalid_api_key)?;
    tracing::Span::current().record("tenant", resolved.tenant.id.as_str());
    tracing::Span::current().record("key_id", resolved.key_id.as_str());
    request.extensions_mut().insert(Caller {
        tenant: resolved.tenant,
        key_id: resolved.key_id,
    });
    Ok(next.run(request).await)
}

fn bearer_token(request: &Request) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

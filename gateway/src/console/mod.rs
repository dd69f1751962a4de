//! The operators' web console at `/console`: HTML pages rendered here, over the admin API's own
//! handlers, for operators, tenant-admins and auditors.
//!
//! - Nothing outside the binary: templates (minijinja, already the chat templates' engine),
//!   styles, script and the usage chart (plotters' SVG backend, as the load-test harness) are
//!   compiled in; a page makes no request beyond this gateway.
//! - Every action goes through the same handler as `/admin/*` (`admin_api`), called in process
//!   with the signed-in key's [`control_plane::Actor`]: what a role may see and change, and the
//!   audit log, are the admin API's, never a second copy of its rules.
//! - A session (`session`) holds the admin key's digest, never the key, and asks the current
//!   directory for its actor at every request: a revoked or expired key ends its sessions at the
//!   next directory update (the store is polled every 500 ms).
//! - Every response: `Cache-Control: no-store`, a content security policy allowing this origin
//!   only and no framing; every form carries its session's CSRF token; the key is posted, never
//!   put in a URL.

mod admin_api;
mod chart;
mod pages;
mod session;
mod view;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};

use crate::paths::console as paths;
use crate::state::AppState;

pub use session::{Session, Sessions};

/// What every console handler reaches: the sessions and the admin API.
pub struct Console {
    /// Signed-in sessions of this replica.
    pub sessions: Sessions,
    /// The admin handlers, called in process.
    admin: admin_api::AdminApi,
    /// The server's state (the directory, the engines' figures).
    state: AppState,
}

/// The console's routes (none when `[console] enabled = false`); `admin` are the admin API's
/// routes without their key check.
pub fn router(state: &AppState, admin: Router<AppState>) -> Router<AppState> {
    let config = &state.limits.console;
    if !config.enabled {
        return Router::new();
    }
    let console = Arc::new(Console {
        sessions: Sessions::new(config),
        admin: admin_api::AdminApi::new(admin.with_state(state.clone())),
        state: state.clone(),
    });
    Router::new()
        .route(paths::HOME, get(pages::home))
        .route("/console/", get(pages::home))
        .route(
            paths::SIGN_IN,
            get(pages::sign_in_form).post(pages::sign_in),
        )
        .route(paths::SIGN_OUT, post(pages::sign_out))
        .route(paths::OVERVIEW, get(pages::overview))
        .route(paths::OVERVIEW_DATA, get(pages::overview_data))
        .route(paths::TENANTS, get(pages::tenants))
        .route(paths::TENANT, get(pages::tenant))
        .route(paths::TENANT_KEYS, post(pages::issue_key))
        .route(paths::KEY_ROTATE, post(pages::rotate_key))
        .route(paths::KEY_REVOKE, post(pages::revoke_key))
        .route(paths::GRANTS, get(pages::grants).post(pages::create_grant))
        .route(paths::PRICES, post(pages::set_price))
        .route(paths::AUDIT, get(pages::audit))
        .route(paths::USAGE_CSV, get(pages::usage_csv))
        .route(paths::STYLESHEET, get(stylesheet))
        .route(paths::SCRIPT, get(script))
        .layer(Extension(console))
}

/// The content security policy of every console response: this origin only, no inline
/// script, no framing, forms post only here.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// Headers that keep console pages out of shared caches and frames: on every response under
/// `/console` (refusals of the router itself included, such as 405 and 404).
pub async fn security_headers(request: Request, next: Next) -> Response {
    let console = request.uri().path().starts_with(paths::HOME);
    let mut response = next.run(request).await;
    if !console {
        return response;
    }
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/console.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/console.js"),
    )
}

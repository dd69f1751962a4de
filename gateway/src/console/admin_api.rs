//! The admin API called in process: each console action is one request to the same handler as
//! `/admin/*`, with the signed-in key's actor in place of the key check, so roles, tenant scope,
//! validation and the audit log are the admin API's own.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header::CONTENT_TYPE, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use control_plane::Actor;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// The admin routes, ready to call.
pub struct AdminApi {
    routes: Router,
}

/// An admin call's refusal: its status and the admin API's message.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The admin API's status (403 for another tenant, 404, 400, 503 ...).
    pub status: StatusCode,
    /// Its `error.message`.
    pub message: String,
}

impl AdminApi {
    /// Over `routes` (the admin routes with the server's state, without their key check).
    pub fn new(routes: Router) -> Self {
        Self { routes }
    }

    /// `method path` as `actor`, with a JSON body: the answer's JSON, or the refusal.
    pub async fn call(
        &self,
        actor: &Actor,
        method: Method,
        path: impl Into<String>,
        body: Option<Value>,
    ) -> Result<Value, Refusal> {
        let response = self.respond(actor, method, path, body).await;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(json);
        }
        Err(Refusal {
            status,
            message: json["error"]["message"]
                .as_str()
                .unwrap_or("the admin API refused this")
                .to_string(),
        })
    }

    /// `GET path` as `actor`.
    pub async fn get(&self, actor: &Actor, path: impl Into<String>) -> Result<Value, Refusal> {
        self.call(actor, Method::GET, path, None).await
    }

    /// The admin API's response itself (a CSV export passed through).
    pub async fn respond(
        &self,
        actor: &Actor,
        method: Method,
        path: impl Into<String>,
        body: Option<Value>,
    ) -> Response {
        // The admin API's key layer refuses an auditor's writes; that layer is not on this path.
        if actor.role == control_plane::Role::Auditor
            && !matches!(method, Method::GET | Method::HEAD)
        {
            return crate::error::ApiError::forbidden("an auditor key may only read")
                .into_response();
        }
        let mut request = Request::builder().method(method).uri(path.into());
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let body = match body {
            Some(json) => Body::from(json.to_string()),
            None => Body::empty(),
        };
        let mut request = request.body(body).expect("a valid request");
        request.extensions_mut().insert(actor.clone());
        match self.routes.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

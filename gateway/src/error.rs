//! The one place where errors become HTTP responses, in OpenAI's error format:
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine_api::EngineError;
use serde::Serialize;

/// An error as the client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// For people.
    pub message: String,
    /// OpenAI's `type`.
    pub kind: &'static str,
    /// The request field at fault.
    pub param: Option<String>,
    /// OpenAI's `code`, for programs.
    pub code: Option<&'static str>,
    /// For 429s and 503s: when to retry, and the limits to report (boxed: rare, and large).
    pub rate_limit: Option<Box<RateLimitDetails>>,
    /// What went wrong inside (upstream addresses, OS errors, file paths): written to the log,
    /// in the request's span (so under its request id), never sent to the tenant.
    pub detail: Option<String>,
}

/// What a 429 or 503 adds to its response headers.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitDetails {
    /// `Retry-After`, when known.
    pub retry_after: Option<std::time::Duration>,
    /// The quota limits' state for the `x-ratelimit-*` headers (`None`: not a quota refusal).
    pub status: Option<policies::RateLimitStatus>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

/// The inner object of an error response (also sent as an SSE event mid-stream).
#[derive(Serialize)]
pub struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            rate_limit: None,
            detail: None,
        }
    }

    /// Keeps `detail` for the log only (see [`ApiError::detail`]).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// A fault of ours or of an engine, told to the tenant in general terms (`public`), with the
    /// cause in the log under the request's id.
    pub fn server_fault(public: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::internal(format!(
            "{} The cause is in the gateway's log under this response's `x-request-id`.",
            public.into()
        ))
        .with_detail(detail)
    }

    /// 500: a generation failed after it started (the reason is logged, not sent).
    pub fn generation_failed(reason: &str) -> Self {
        Self::server_fault("Generation failed.", reason).with_code("generation_failed")
    }

    /// Writes the hidden detail, if any, to the log (inside the request's span).
    fn log_detail(&self) {
        if let Some(detail) = &self.detail {
            tracing::warn!(
                status = self.status.as_u16(),
                code = self.code.unwrap_or(""),
                detail,
                "request failed"
            );
        }
    }

    /// Names the request field at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets the machine-readable code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// 400: the request is malformed or a parameter is out of range.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 for a parameter with an invalid value.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::invalid_request(message)
            .with_param(param)
            .with_code("invalid_value")
    }

    /// 401: no key, or a key we do not know.
    pub fn missing_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "You didn't provide an API key. Send it in the Authorization header as `Bearer <key>`.",
        )
        .with_code("missing_api_key")
    }

    /// 401: a key nobody has.
    pub fn invalid_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "Incorrect API key provided.",
        )
        .with_code("invalid_api_key")
    }

    /// 404: the model does not exist here, or the caller's tenant may not use it: both answer
    /// alike (as OpenAI does), so a tenant cannot learn which models other tenants use.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist."),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    /// 404: no object `id` of this kind for the caller's tenant (another tenant's is answered
    /// alike: its existence is not told).
    pub fn object_not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("No {what} with id `{id}` was found."),
        )
        .with_code("not_found")
    }

    /// 400: a feature that needs the control-plane store, on a gateway without one.
    pub fn needs_store(what: &str) -> Self {
        Self::invalid_request(format!(
            "{what} needs the gateway's control-plane store, which this gateway does not run (`[control_plane] enabled`)."
        ))
        .with_code("store_not_configured")
    }

    /// 403: a tenant's key on an admin route.
    pub fn admin_only() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "This route needs an admin key.",
        )
        .with_code("admin_key_required")
    }

    /// 403: the admin key's role does not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message).with_code("forbidden")
    }

    /// 429: the admin key made more requests this minute than `[server]
    /// admin_requests_per_minute` allows.
    pub fn admin_rate_limited(retry_after: std::time::Duration) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "Rate limit reached for admin requests per minute.",
        )
        .with_code("admin_rate_limit_exceeded");
        e.rate_limit = Some(Box::new(RateLimitDetails {
            retry_after: Some(retry_after),
            status: None,
        }));
        e
    }

    /// 429: a grant or budget has no room for the request (or none is active): OpenAI's
    /// `insufficient_quota`, with a message that names it.
    pub fn allowance_exhausted(message: &str) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            message.to_string(),
        )
        .with_code("insufficient_quota")
    }

    /// 400: a write that needs the control-plane store, on a gateway without one.
    pub fn control_plane_disabled() -> Self {
        Self::invalid_request(
            "Tenants, projects and keys come from the configuration file on this gateway: \
             enable `[control_plane]` to change them through the admin API.",
        )
        .with_code("control_plane_disabled")
    }

    /// 429: a limit of the tenant's quota. An exhausted daily budget is `insufficient_quota`,
    /// everything else `rate_limit_exceeded`, as OpenAI names them.
    pub fn rate_limited(rejection: &policies::Rejection) -> Self {
        use policies::RejectReason as R;
        let (kind, message) = match rejection.reason {
            R::DailyBudget => ("insufficient_quota", "You exceeded your daily token budget; it resets at midnight UTC.".to_string()),
            R::DailyBudgetShort => ("insufficient_quota", "This request's prompt tokens + max_tokens exceed what is left of your daily token budget; lower max_tokens, or leave it out to use what is left.".to_string()),
            R::RequestsPerMinute => ("rate_limit_exceeded", "Rate limit reached for requests per minute.".to_string()),
            R::TokensPerMinute => ("rate_limit_exceeded", "Rate limit reached for tokens per minute (prompt tokens + max_tokens are reserved).".to_string()),
            R::RequestTooLarge => ("rate_limit_exceeded", "This request's prompt tokens + max_tokens exceed your tokens-per-minute limit; lower max_tokens.".to_string()),
            R::Concurrency => ("rate_limit_exceeded", "Too many concurrent requests for your key's tenant.".to_string()),
        };
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, kind, message).with_code(kind);
        e.rate_limit = Some(Box::new(RateLimitDetails {
            retry_after: rejection.retry_after,
            status: Some(rejection.status.clone()),
        }));
        e
    }

    /// 429: the tenant already has as many requests waiting for the engine as it may; they
    /// are refused rather than queued for minutes.
    pub fn queue_full(message: String) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            message,
        )
        .with_code("queue_full");
        e.rate_limit = Some(Box::new(RateLimitDetails {
            retry_after: Some(QUEUE_RETRY_AFTER),
            status: None,
        }));
        e
    }

    /// 503: the quota store shared by the replicas cannot be reached and the operator chose
    /// `fail_closed`: no request is admitted unmetered.
    pub fn quota_store_unavailable(retry_after: std::time::Duration) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "The quota service is unavailable; please retry shortly.",
        )
        .with_code("quota_store_unavailable");
        e.rate_limit = Some(Box::new(RateLimitDetails {
            retry_after: Some(retry_after),
            status: None,
        }));
        e
    }

    /// 503: a batch-class request met an engine that is backed up, and was shed.
    pub fn overloaded(message: String) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            .with_code("overloaded");
        e.rate_limit = Some(Box::new(RateLimitDetails {
            retry_after: Some(QUEUE_RETRY_AFTER),
            status: None,
        }));
        e
    }

    /// 400: an upstream refused the request as invalid. Its message, `param` and `code` go to
    /// the client as they came (they speak of the request): the same error a local pool would
    /// give, whichever pool served it. An unknown code becomes `upstream_refused`.
    pub fn upstream_refused(refusal: &engine_api::Refusal) -> Self {
        const KNOWN_CODES: [&str; 4] = [
            "context_length_exceeded",
            "invalid_value",
            "empty_prompt",
            "request_too_large",
        ];
        let code = KNOWN_CODES
            .into_iter()
            .find(|known| refusal.code.as_deref() == Some(*known))
            .unwrap_or("upstream_refused");
        let error = Self::invalid_request(refusal.message.clone()).with_code(code);
        match &refusal.param {
            Some(param) => error.with_param(param.clone()),
            None => error,
        }
    }

    /// 503: every replica that could serve the model is down or saturated.
    pub fn no_replica(model: &str, reason: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!("The model `{model}` cannot be served now. Retry shortly."),
        )
        .with_code("no_replica_available")
        .with_detail(reason)
    }

    /// 503: the model is still loading.
    pub fn model_not_ready(model: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!("The model `{model}` is still loading; retry shortly."),
        )
        .with_code("model_not_ready")
    }

    /// 413: the body is over `max_body_bytes`.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body exceeds the limit of {limit} bytes."),
        )
        .with_code("request_too_large")
    }

    /// 404: no such route.
    pub fn route_not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Unknown request URL: {path}."),
        )
        .with_code("unknown_url")
    }

    /// 405: the route exists, not with this method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("Method {method} is not allowed for {path}."),
        )
        .with_code("method_not_allowed")
    }

    /// 504: no response head within the request timeout.
    pub fn timeout() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "The request took longer than the gateway's timeout.",
        )
        .with_code("timeout")
    }

    /// 500: our fault. The message says what failed, never a secret.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The error object, for an SSE error event.
    pub fn detail(&self) -> ErrorDetail<'_> {
        ErrorDetail {
            message: &self.message,
            kind: self.kind,
            param: self.param.as_deref(),
            code: self.code,
        }
    }

    /// The error body as JSON text.
    pub fn to_json(&self) -> String {
        self.log_detail();
        serde_json::to_string(&ErrorBody {
            error: self.detail(),
        })
        .expect("error bodies serialise")
    }
}

/// Anthropic's `error.type` for a response of `status` (its Messages API names errors by
/// kind of status, not by OpenAI's types).
pub fn anthropic_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 | 403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error body in Anthropic's shape (`{"type": "error", "error": {"type", "message"}}`),
/// from an error of ours in OpenAI's shape (every error is made in OpenAI's; the `/v1/messages`
/// routes have theirs rewritten into this by `layers::anthropic_errors`). OpenAI's `code` and
/// `param` ride along: Anthropic's clients ignore fields they do not know.
pub fn anthropic_error_body(status: StatusCode, openai_body: &[u8]) -> Vec<u8> {
    let parsed: serde_json::Value = serde_json::from_slice(openai_body).unwrap_or_default();
    let error = &parsed["error"];
    let message = error["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(openai_body);
            match text.trim() {
                "" => status.canonical_reason().unwrap_or("error").to_string(),
                text => text.to_string(),
            }
        });
    let mut body = serde_json::json!({
        "type": "error",
        "error": {"type": anthropic_error_type(status), "message": message},
    });
    for field in ["code", "param"] {
        if let Some(value) = error.get(field).filter(|v| !v.is_null()) {
            body["error"][field] = value.clone();
        }
    }
    serde_json::to_vec(&body).expect("error bodies serialise")
}

impl ApiError {
    /// The error in Anthropic's shape, as JSON text (a stream's `error` event).
    pub fn to_anthropic_json(&self) -> String {
        let openai = self.to_json();
        String::from_utf8(anthropic_error_body(self.status, openai.as_bytes()))
            .expect("JSON is UTF-8")
    }
}

/// When a refused queue is worth another try: a few steps drain a good part of any queue.
const QUEUE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log_detail();
        let body = ErrorBody {
            error: self.detail(),
        };
        let mut response = (self.status, Json(body)).into_response();
        let Some(details) = &self.rate_limit else {
            return response;
        };
        if let Some(status) = &details.status {
            // The `x-ratelimit-*` headers are written by their layer, from this snapshot.
            response
                .extensions_mut()
                .insert(crate::extensions::RateLimitSnapshot(status.clone()));
        }
        if let Some(after) = details.retry_after {
            // Whole seconds, rounded up, never 0.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs.max(1)),
            );
        }
        response
    }
}

impl From<control_plane::StoreError> for ApiError {
    fn from(e: control_plane::StoreError) -> Self {
        use control_plane::StoreError as E;
        match e {
            E::Forbidden(message) => Self::forbidden(message),
            E::NotFound(message) => {
                Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
                    .with_code("not_found")
            }
            E::Conflict(message) => {
                Self::new(StatusCode::CONFLICT, "invalid_request_error", message)
                    .with_code("conflict")
            }
            E::Invalid { param, message } => {
                let e = Self::invalid_request(message).with_code("invalid_value");
                match param.is_empty() {
                    true => e,
                    false => e.with_param(param),
                }
            }
            E::Unavailable(detail) => {
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "The control-plane store is unavailable: nothing was changed; retry shortly.",
                )
                .with_code("store_unavailable")
                .with_detail(detail);
                e.rate_limit = Some(Box::new(RateLimitDetails {
                    retry_after: Some(std::time::Duration::from_secs(2)),
                    status: None,
                }));
                e
            }
            E::Migration(detail) | E::Corrupt(detail) => {
                Self::server_fault("The control-plane store failed.", detail)
            }
        }
    }
}

impl From<ledger::LedgerError> for ApiError {
    fn from(err: ledger::LedgerError) -> Self {
        match err {
            ledger::LedgerError::InvalidTime(_) => ApiError::invalid_request(err.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        let message = err.to_string();
        match err {
            EngineError::ContextLengthExceeded {
                context_length,
                prompt_tokens,
                ..
            } => {
                let param = if prompt_tokens >= context_length {
                    "messages"
                } else {
                    "max_tokens"
                };
                ApiError::invalid_request(message)
                    .with_param(param)
                    .with_code("context_length_exceeded")
            }
            EngineError::EmptyPrompt => {
                ApiError::invalid_request(message).with_code("empty_prompt")
            }
            EngineError::InvalidTokenId(_) => ApiError::invalid_request(message)
                .with_param("prompt")
                .with_code("invalid_value"),
            EngineError::ChatTemplate(_) => {
                ApiError::invalid_request(message).with_param("messages")
            }
            EngineError::InvalidInput(_) => ApiError::invalid_request(message)
                .with_param("input")
                .with_code("invalid_value"),
            // Checked at the edge already; an engine may still find a schema too large for
            // its vocabulary.
            EngineError::InvalidConstraint(_) => ApiError::invalid_request(message)
                .with_param("response_format")
                .with_code("invalid_value"),
            EngineError::QueueFull { .. } => ApiError::queue_full(message),
            EngineError::Overloaded { .. } => ApiError::overloaded(message),
            EngineError::EngineStopped
            | EngineError::Load(_)
            | EngineError::Fetch(_)
            | EngineError::Tokenizer(_)
            | EngineError::Embedding(_)
            | EngineError::Constraint(_)
            | EngineError::Execution(_) => ApiError::server_fault("The engine failed.", message),
        }
    }
}

impl From<routing::RouteError> for ApiError {
    fn from(err: routing::RouteError) -> Self {
        match err {
            routing::RouteError::NoReplica { model, reason } => {
                ApiError::no_replica(&model, &reason)
            }
            routing::RouteError::Engine(e) => e.into(),
            full @ routing::RouteError::QueueFull { .. } => ApiError::queue_full(full.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = ApiError::invalid_param("temperature", "too hot");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"message": "too hot", "type": "invalid_request_error", "param": "temperature", "code": "invalid_value"}})
        );
    }

    #[test]
    fn context_overflow_names_the_culprit() {
        let e: ApiError = EngineError::ContextLengthExceeded {
            context_length: 10,
            prompt_tokens: 4,
            max_tokens: 20,
        }
        .into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert_eq!(e.code, Some("context_length_exceeded"));
    }
}

//! `GET /metrics`: every series, in the format the scraper asks for. OpenMetrics when `Accept`
//! names it (Prometheus asks for it first), else the classic text format 0.0.4, as the
//! Prometheus client libraries do: older scrapers and `promtool check metrics` read only that.

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use policies::ApiKey;

use crate::error::ApiError;
use crate::layers::authentication::bearer_token;

use crate::state::AppState;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics, negotiated by `Accept`; behind a key when `[telemetry] metrics_keys` is set.
pub async fn render(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let directory = state.directory();
    if directory.metrics_need_a_key() {
        let presented = bearer_token(&headers).map(ApiKey::from_plaintext);
        match presented {
            None => return ApiError::missing_api_key().into_response(),
            Some(key) if !directory.may_read_metrics(&key) => {
                return ApiError::invalid_api_key().into_response()
            }
            Some(_) => {}
        }
    }
    let openmetrics = crate::metrics::render(&state.metrics);
    let wants_openmetrics = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    if wants_openmetrics {
        ([(CONTENT_TYPE, OPENMETRICS)], openmetrics).into_response()
    } else {
        (
            [(CONTENT_TYPE, CLASSIC)],
            crate::metrics::to_classic_text(&openmetrics),
        )
            .into_response()
    }
}

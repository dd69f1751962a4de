//! `/admin/prices`: each model's price versions (per million input, cached-input and output
//! tokens, in integer minor units of `[control_plane] currency`, with a batch discount). Setting
//! one is an operator's write to the control-plane store; every admin key may read them.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use control_plane::Actor;
use serde_json::{json, Value};

use super::admin::only_known;
use super::tenancy::{json_body, snapshot, write};
use crate::error::ApiError;
use crate::state::AppState;

/// `GET /admin/prices?model=`: every price version, oldest first per model.
pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    only_known(&params, &["model"])?;
    let snapshot = snapshot(&state)?;
    let mut prices: Vec<&control_plane::Price> = snapshot
        .prices
        .iter()
        .filter(|p| params.get("model").is_none_or(|m| &p.model == m))
        .collect();
    prices.sort_by(|a, b| (&a.model, a.effective_from_ms).cmp(&(&b.model, b.effective_from_ms)));
    Ok(Json(json!({"object": "list", "data": prices})))
}

/// `POST /admin/prices` (operators): a new price version of a model, in force from
/// `effective_from_ms` (default now; never in the past).
pub async fn set(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_body(&body)?;
    let currency = state
        .store()
        .ok_or_else(ApiError::control_plane_disabled)?
        .currency()
        .to_string();
    let price = write(&state, move |s| s.set_price(&actor, body, &currency)).await?;
    Ok((StatusCode::CREATED, Json(json!(price))).into_response())
}

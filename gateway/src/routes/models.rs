//! `GET /v1/models` and `GET /v1/models/{model}`: the models this tenant may use.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extensions::Caller;
use crate::state::AppState;

fn model_object(id: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": "gateway"})
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<Value> {
    let data: Vec<Value> = state
        .models
        .list()
        .into_iter()
        .filter(|(id, _, _)| caller.tenant.models.allows(id))
        .map(|(id, created, _)| model_object(&id, created))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn retrieve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .models
        .list()
        .into_iter()
        .find(|(id, _, _)| *id == model && caller.tenant.models.allows(id))
        .map(|(id, created, _)| Json(model_object(&id, created)))
        .ok_or_else(|| ApiError::model_not_found(&model))
}

//! `GET /v1/models` and `GET /v1/models/{model}`: the models this tenant may use.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extensions::Caller;
use crate::models::ModelState;
use crate::state::AppState;

/// OpenAI's model object, with what clients of vLLM and llama.cpp also read: the context
/// length (`max_model_len`, as vLLM names it) and, for files served here, the architecture
/// and quantization.
fn model_object(id: &str, created: u64, state: &ModelState) -> Value {
    let mut object =
        json!({"id": id, "object": "model", "created": created, "owned_by": "gateway"});
    if let ModelState::Ready(router) = state {
        let info = router.info();
        object["max_model_len"] = json!(info.context_length);
        if let Some(architecture) = &info.file.architecture {
            object["architecture"] = json!(architecture);
        }
        if let Some(quantization) = &info.file.quantization {
            object["quantization"] = json!(quantization);
        }
    }
    object
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<Value> {
    let data: Vec<Value> = state
        .models
        .list()
        .into_iter()
        .filter(|(id, _, _)| caller.may_use(id))
        .map(|(id, created, state)| model_object(&id, created, &state))
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
        .find(|(id, _, _)| *id == model && caller.may_use(id))
        .map(|(id, created, state)| Json(model_object(&id, created, &state)))
        .ok_or_else(|| ApiError::model_not_found(&model))
}

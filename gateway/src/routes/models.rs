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

/// Every model the caller may use, then the adapters it may use over them (as vLLM lists LoRA
/// modules: their own id, `parent` the model they adapt).
fn visible(state: &AppState, caller: &Caller) -> Vec<Value> {
    let models = state.models.list();
    let mut data: Vec<Value> = models
        .iter()
        .filter(|(id, _, _)| caller.may_use(id))
        .map(|(id, created, state)| model_object(id, *created, state))
        .collect();
    let catalog = state.directory().adapters.clone();
    for adapter in catalog.visible_to(&caller.tenant.id) {
        let Some((_, created, model)) = models
            .iter()
            .find(|(id, _, _)| *id == adapter.model && caller.may_use(id))
        else {
            continue;
        };
        let mut object = model_object(&adapter.engine.id, *created, model);
        object["owned_by"] = json!(adapter.tenant.as_deref().unwrap_or("gateway"));
        object["parent"] = json!(adapter.model);
        object["root"] = json!(adapter.model);
        data.push(object);
    }
    data
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<Value> {
    Json(json!({"object": "list", "data": visible(&state, &caller)}))
}

pub async fn retrieve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    visible(&state, &caller)
        .into_iter()
        .find(|object| object["id"] == model.as_str())
        .map(Json)
        .ok_or_else(|| ApiError::model_not_found(&model))
}

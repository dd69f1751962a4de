//! `GET /health` (the process is up) and `GET /ready` (every model is loaded).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::models::ModelState;
use crate::state::AppState;

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let models: serde_json::Map<String, Value> = state
        .models
        .list()
        .into_iter()
        .map(|(id, _, model_state)| {
            let status = match model_state {
                ModelState::Loading => json!("loading"),
                ModelState::Ready(_) | ModelState::Embeddings(_) => json!("ready"),
                // Unauthenticated: the reason (file paths, OS errors) is in the log only.
                ModelState::Failed(_) => json!("failed"),
            };
            (id, status)
        })
        .collect();
    let ready = state.models.all_ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = if ready { "ready" } else { "not_ready" };
    (code, Json(json!({"status": status, "models": models})))
}

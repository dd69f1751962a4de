//! `GET /admin/pools` (every pool, replica, health and load) and `GET /load` (what an
//! `engine-worker` reports to the gateways that route to it).

use axum::extract::State;
use axum::{Extension, Json};
use engine_api::EngineCounters;
use engine_api::{LoadReport, ReportedLoad};
use serde_json::{json, Value};

use crate::extensions::Polled;
use crate::models::ModelState;
use crate::state::AppState;

/// Every ready model's pools with their replicas.
pub async fn admin_pools(
    State(state): State<AppState>,
    Extension(actor): Extension<control_plane::Actor>,
) -> Result<Json<Value>, crate::error::ApiError> {
    if !actor.may_read_all() {
        return Err(crate::error::ApiError::forbidden(
            "The pools serve every tenant: an operator or auditor key reads them.",
        ));
    }
    let pools: Vec<_> = state
        .models
        .list()
        .into_iter()
        .filter_map(|(_, _, model)| match model {
            ModelState::Ready(router) => Some(router.snapshot()),
            _ => None,
        })
        .flatten()
        .collect();
    Ok(Json(json!({"object": "list", "data": pools})))
}

/// The load of each ready model, over its replicas in this process. Behind an admin key (on an
/// engine-worker, the gateways' shared secret): the figures move with every tenant's requests.
pub async fn load(
    State(state): State<AppState>,
    Extension(actor): Extension<control_plane::Actor>,
) -> Result<(Extension<Polled>, Json<LoadReport>), crate::error::ApiError> {
    if !actor.may_read_all() {
        return Err(crate::error::ApiError::forbidden(
            "The load covers every tenant: an operator or auditor key reads it.",
        ));
    }
    let models = state
        .models
        .list()
        .into_iter()
        .filter_map(|(id, _, model)| match model {
            ModelState::Ready(router) => Some((id, router)),
            _ => None,
        })
        .map(|(id, router)| {
            let mut load = ReportedLoad {
                model: id,
                ..ReportedLoad::default()
            };
            for replica in router.replicas() {
                let c = replica.counters();
                load.running += EngineCounters::get(&c.running);
                load.waiting += EngineCounters::get(&c.waiting);
                load.kv_blocks_free += EngineCounters::get(&c.kv_blocks_free);
                load.kv_blocks_total += EngineCounters::get(&c.kv_blocks_total);
                load.outstanding_tokens += replica.outstanding_tokens();
            }
            load
        })
        .collect();
    Ok((Extension(Polled), Json(LoadReport { models })))
}

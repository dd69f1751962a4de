//! `/admin/*`: tenants with their limits and live counters, and today's usage per tenant.

use axum::extract::State;
use axum::Json;
use policies::{LimitState, TenantSpec};
use serde_json::{json, Value};

use crate::state::AppState;

fn limit_state(state: &Option<LimitState>) -> Value {
    match state {
        Some(s) => {
            json!({"limit": s.limit, "remaining": s.remaining, "reset_ms": s.reset.as_millis() as u64})
        }
        None => Value::Null,
    }
}

fn tenant_object(state: &AppState, tenant: &TenantSpec) -> Value {
    let limits = &tenant.limits;
    let (in_flight, today) = state.quotas.live(tenant);
    let status = state.quotas.status(tenant);
    json!({
        "id": tenant.id.as_str(),
        "models": tenant.models,
        "limits": {
            "requests_per_minute": limits.requests_per_minute,
            "tokens_per_minute": limits.tokens_per_minute,
            "max_concurrent": limits.max_concurrent,
            "daily_tokens": limits.daily_tokens,
            "weight": limits.weight,
        },
        "live": {
            "in_flight": in_flight,
            "requests": limit_state(&status.requests),
            "tokens": limit_state(&status.tokens),
            "tokens_used_today": today.total_tokens(),
        },
    })
}

pub async fn tenants(State(state): State<AppState>) -> Json<Value> {
    let directory = state.directory();
    let data: Vec<Value> = directory
        .tenants
        .iter()
        .map(|t| tenant_object(&state, t))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// Today (UTC) from the gateway's in-memory counters.
pub async fn usage(State(state): State<AppState>) -> Json<Value> {
    let directory = state.directory();
    let data: Vec<Value> = directory
        .tenants
        .iter()
        .map(|t| {
            let (_, today) = state.quotas.live(t);
            json!({
                "tenant": t.id.as_str(),
                "requests": today.requests,
                "prompt_tokens": today.prompt_tokens,
                "completion_tokens": today.completion_tokens,
                "total_tokens": today.total_tokens(),
                "rejections": today.rejections,
            })
        })
        .collect();
    let day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    Json(json!({"object": "list", "utc_day": day, "data": data}))
}

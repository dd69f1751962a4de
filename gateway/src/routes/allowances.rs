//! `/admin/grants`, `/admin/budgets` (operators create, admins read what they may) and
//! `/admin/allowances`: what each grant, and each budget in each period, has used, from the
//! control-plane store (JSON or CSV).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use control_plane::{Actor, Unit};
use serde::Serialize;
use serde_json::{json, Value};

use super::admin::{csv_response, only_known, queried_tenant, Format};
use super::tenancy::{json_body, snapshot, write};
use crate::error::ApiError;
use crate::state::AppState;

/// The items the caller may read, of the tenant the query names (if it names one).
fn readable<'a, T>(
    items: &'a [T],
    actor: &Actor,
    params: &HashMap<String, String>,
    tenant_of: impl Fn(&T) -> &policies::TenantId,
) -> Result<Vec<&'a T>, ApiError> {
    only_known(params, &["tenant"])?;
    let tenant = queried_tenant(actor, params)?;
    Ok(items
        .iter()
        .filter(|item| {
            let of = tenant_of(item);
            actor.may_read(of) && tenant.as_ref().is_none_or(|t| t == of)
        })
        .collect())
}

/// `GET /admin/grants?tenant=`: the grants the caller may read.
pub async fn list_grants(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = snapshot(&state)?;
    let data = readable(&snapshot.grants, &actor, &params, |g| &g.tenant)?;
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `POST /admin/grants` (operators).
pub async fn create_grant(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_body(&body)?;
    let grant = write(&state, move |s| s.create_grant(&actor, body)).await?;
    Ok((StatusCode::CREATED, Json(json!(grant))).into_response())
}

/// `GET /admin/budgets?tenant=`: the budgets the caller may read.
pub async fn list_budgets(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = snapshot(&state)?;
    let data = readable(&snapshot.budgets, &actor, &params, |b| &b.tenant)?;
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `POST /admin/budgets` (operators).
pub async fn create_budget(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_body(&body)?;
    let budget = write(&state, move |s| s.create_budget(&actor, body)).await?;
    Ok((StatusCode::CREATED, Json(json!(budget))).into_response())
}

/// One line of the allowance report.
#[derive(Serialize)]
struct Line {
    kind: &'static str,
    id: String,
    tenant: String,
    project: Option<String>,
    /// `tokens` or `money`.
    unit: &'static str,
    /// A budget's period (`YYYY-MM-DD`, `YYYY-MM`).
    period: Option<String>,
    /// Tokens, or minor units.
    amount: i64,
    /// Settled use in the same unit (money rounded half up).
    used: i64,
    /// Settled use exactly (money: millionths of a minor unit).
    used_exact: i64,
    /// `amount - used`, never below 0.
    remaining: i64,
    starts_at_ms: Option<i64>,
    expires_at_ms: Option<i64>,
}

/// `GET /admin/allowances?tenant=&format=json|csv`: every grant's use, and every budget's in
/// each period it was used.
pub async fn report(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only_known(&params, &["tenant", "format"])?;
    let format = Format::of(&params)?;
    let tenant = queried_tenant(&actor, &params)?;
    let snapshot = snapshot(&state)?;
    let store = state
        .store()
        .ok_or_else(ApiError::control_plane_disabled)?
        .clone();
    let uses = store.call(|s| s.allowance_use()).await?;
    let used_of = |kind: &str, id: &str, period: Option<&str>| -> i64 {
        uses.iter()
            .find(|u| u.kind == kind && u.id == id && u.period.as_deref() == period)
            .map_or(0, |u| u.used)
    };
    let visible = |t: &policies::TenantId| {
        actor.may_read(t) && tenant.as_ref().is_none_or(|wanted| wanted == t)
    };
    let in_unit = |unit: Unit, exact: i64| match unit {
        Unit::Tokens => exact,
        Unit::Money => (exact + 500_000).div_euclid(1_000_000),
    };
    let mut lines = Vec::new();
    for g in snapshot.grants.iter().filter(|g| visible(&g.tenant)) {
        let exact = used_of("grant", &g.id, None);
        let used = in_unit(g.unit, exact);
        lines.push(Line {
            kind: "grant",
            id: g.id.clone(),
            tenant: g.tenant.to_string(),
            project: g.project.clone(),
            unit: match g.unit {
                Unit::Tokens => "tokens",
                Unit::Money => "money",
            },
            period: None,
            amount: g.amount,
            used,
            used_exact: exact,
            remaining: (g.amount - used).max(0),
            starts_at_ms: Some(g.starts_at_ms),
            expires_at_ms: Some(g.expires_at_ms),
        });
    }
    for b in snapshot.budgets.iter().filter(|b| visible(&b.tenant)) {
        let mut periods: Vec<&str> = uses
            .iter()
            .filter(|u| u.kind == "budget" && u.id == b.id)
            .filter_map(|u| u.period.as_deref())
            .collect();
        let current = b.period_at(control_plane::now_ms()).0;
        if !periods.contains(&current.as_str()) {
            periods.push(&current);
        }
        for period in periods {
            let exact = used_of("budget", &b.id, Some(period));
            let used = in_unit(Unit::Money, exact);
            lines.push(Line {
                kind: "budget",
                id: b.id.clone(),
                tenant: b.tenant.to_string(),
                project: b.project.clone(),
                unit: "money",
                period: Some(period.to_string()),
                amount: b.amount,
                used,
                used_exact: exact,
                remaining: (b.amount - used).max(0),
                starts_at_ms: None,
                expires_at_ms: None,
            });
        }
    }
    match format {
        Format::Json => Ok(Json(json!({
            "object": "list",
            "currency": store.currency(),
            "data": lines,
        }))
        .into_response()),
        Format::Csv => csv_response(&lines, "allowances.csv"),
    }
}

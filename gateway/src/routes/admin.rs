//! `/admin/*`: tenants with their limits and live counters; usage from the ledger (JSON or CSV).
//! Every route sees the caller's [`Actor`]: a tenant-admin reads only its own tenant.

use policies::TenantId;
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use control_plane::Actor;
use ledger::{GroupBy, Ledger, UsageQuery};
use policies::{LimitState, TenantSpec};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::AppState;

fn limit_state(state: &Option<LimitState>) -> Value {
    match state {
        Some(s) => {
            json!({"limit": s.limit, "remaining": s.remaining, "reset_ms": s.reset.as_millis() as u64})
        }
        None => Value::Null,
    }
}

/// A tenant as `/admin/tenants` shows it: its limits, its live counters, and (from the store)
/// its name.
pub(super) async fn tenant_object(state: &AppState, tenant: &TenantSpec) -> Value {
    let limits = &tenant.limits;
    let (in_flight, today) = state.quotas.live(tenant).await;
    let status = state.quotas.status(tenant);
    json!({
        "id": tenant.id.as_str(),
        "models": tenant.models,
        "limits": {
            "requests_per_minute": limits.requests_per_minute,
            "tokens_per_minute": limits.tokens_per_minute,
            "max_concurrent": limits.max_concurrent,
            "daily_tokens": limits.daily_tokens,
            "weight": limits.share.weight,
            "priority": limits.share.priority,
            "max_running_share": limits.share.max_running_share,
            "max_kv_share": limits.share.max_kv_share,
            "max_waiting": limits.share.max_waiting,
        },
        "live": {
            "in_flight": in_flight,
            "requests": limit_state(&status.requests),
            "tokens": limit_state(&status.tokens),
            "tokens_used_today": today.total_tokens(),
        },
    })
}

/// `GET /admin/tenants`: every tenant the caller may read, with `source` (`file` or `store`).
pub async fn tenants(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Json<Value> {
    let directory = state.directory();
    let readable = directory.tenants.iter().filter(|t| actor.may_read(&t.id));
    let data: Vec<Value> =
        futures::future::join_all(readable.map(|t| tenant_object(&state, t))).await;
    Json(json!({"object": "list", "source": directory.source.as_str(), "data": data}))
}

/// `GET /admin/usage?tenant=&from=&to=&group_by=day|model&format=json|csv`: usage summed per
/// tenant (and day or model) from the ledger. `from`/`to`: `YYYY-MM-DD`, an RFC 3339 date-time
/// or Unix seconds, compared with each request's end; `from` inclusive, `to` exclusive.
pub async fn usage(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (ledger, query, format) = usage_query(&state, &actor, &params)?;
    let rows = tokio::task::spawn_blocking(move || ledger.usage(&query))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    match format {
        Format::Json => {
            // Costs are in the currency prices are set in (only a control-plane store has any).
            let currency = state.store().map(|s| s.currency().to_string());
            Ok(Json(json!({"object": "list", "currency": currency, "data": rows})).into_response())
        }
        Format::Csv => csv_response(&rows, "usage.csv"),
    }
}

/// `GET /admin/usage/records?tenant=&from=&to=&format=json|csv`: the ledger's records themselves
/// (the billing export), oldest first.
pub async fn usage_records(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (ledger, query, format) = usage_query(&state, &actor, &params)?;
    let records = tokio::task::spawn_blocking(move || ledger.records(&query))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    match format {
        Format::Json => Ok(Json(json!({"object": "list", "data": records})).into_response()),
        Format::Csv => csv_response(&records, "usage-records.csv"),
    }
}

/// The form of an export.
pub(super) enum Format {
    /// `{"object": "list", "data": [...]}`.
    Json,
    /// CSV, every cell safe to open in a spreadsheet.
    Csv,
}

impl Format {
    /// The `format` query parameter: `json` (default) or `csv`.
    pub(super) fn of(params: &HashMap<String, String>) -> Result<Self, ApiError> {
        match params.get("format").map(String::as_str) {
            None | Some("json") => Ok(Format::Json),
            Some("csv") => Ok(Format::Csv),
            Some(other) => Err(ApiError::invalid_param(
                "format",
                format!("`format` must be `json` or `csv`, not `{other}`."),
            )),
        }
    }
}

/// 400 naming the first parameter not in `known`.
pub(super) fn only_known(params: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::invalid_param(
            unknown,
            format!(
                "Unknown query parameter `{unknown}`; known: {}.",
                known.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// The tenant a query asks about: a tenant-admin's own when it names none, refused when it
/// names another.
pub(super) fn queried_tenant(
    actor: &Actor,
    params: &HashMap<String, String>,
) -> Result<Option<TenantId>, ApiError> {
    let named = match params.get("tenant").filter(|t| !t.is_empty()) {
        Some(text) => Some(
            TenantId::new(text.as_str())
                .map_err(|e| ApiError::invalid_param("tenant", e.to_string()))?,
        ),
        None => None,
    };
    match (named, &actor.tenant) {
        (Some(t), _) => {
            actor.check_read(&t)?;
            Ok(Some(t))
        }
        (None, Some(own)) if !actor.may_read_all() => Ok(Some(own.clone())),
        (None, _) => Ok(None),
    }
}

fn usage_query(
    state: &AppState,
    actor: &Actor,
    params: &HashMap<String, String>,
) -> Result<(Arc<Ledger>, UsageQuery, Format), ApiError> {
    let ledger = state.ledger.clone().ok_or_else(|| {
        ApiError::invalid_request(
            "The usage ledger is disabled on this gateway (`[ledger] enabled = false`).",
        )
        .with_code("ledger_disabled")
    })?;
    only_known(
        params,
        &["tenant", "project", "from", "to", "group_by", "format"],
    )?;
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        params
            .get(name)
            .map(|text| {
                ledger
                    .parse_time(text)
                    .map_err(|e| ApiError::invalid_param(name, e.to_string()))
            })
            .transpose()
    };
    let group_by = match params.get("group_by").map(String::as_str) {
        None | Some("") | Some("tenant") => None,
        Some("day") => Some(GroupBy::Day),
        Some("model") => Some(GroupBy::Model),
        Some("project") => Some(GroupBy::Project),
        Some(other) => {
            return Err(ApiError::invalid_param(
                "group_by",
                format!("`group_by` must be `day`, `model` or `project`, not `{other}`."),
            ))
        }
    };
    let format = Format::of(params)?;
    let tenant = queried_tenant(actor, params)?;
    let project = params.get("project").filter(|p| !p.is_empty()).cloned();
    if project.is_some() && tenant.is_none() {
        return Err(ApiError::invalid_param(
            "project",
            "`project` needs `tenant`: project ids are unique within a tenant.",
        ));
    }
    let query = UsageQuery {
        tenant,
        project,
        from_ms: time("from")?,
        to_ms: time("to")?,
        group_by,
    };
    Ok((ledger, query, format))
}

/// `rows` as a CSV attachment named `filename`.
pub(super) fn csv_response<T: serde::Serialize>(
    rows: &[T],
    filename: &str,
) -> Result<Response, ApiError> {
    let body =
        spreadsheet_safe_csv(rows).map_err(|e| ApiError::internal(format!("CSV export: {e}")))?;
    Ok((
        [
            (CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// `rows` as CSV whose every cell a spreadsheet reads as text, never as a formula (OWASP's CSV
/// injection): a cell a client chose (its request id, say `=HYPERLINK(...)`) that starts with
/// `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'`. Numbers stay numbers.
fn spreadsheet_safe_csv<T: serde::Serialize>(rows: &[T]) -> Result<Vec<u8>, csv::Error> {
    // Serialised once as serde names the columns, then every cell is made safe.
    let mut plain = csv::Writer::from_writer(Vec::new());
    for row in rows {
        plain.serialize(row)?;
    }
    let plain = plain.into_inner().map_err(|e| e.into_error())?;
    let mut safe = csv::Writer::from_writer(Vec::with_capacity(plain.len()));
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(plain.as_slice());
    for record in reader.records() {
        let record = record?;
        safe.write_record(record.iter().map(|cell| inert_cell(cell).into_owned()))?;
    }
    safe.into_inner().map_err(|e| e.into_error().into())
}

/// The cell, with a leading `'` if a spreadsheet would evaluate it.
fn inert_cell(cell: &str) -> std::borrow::Cow<'_, str> {
    let evaluated = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if evaluated && cell.parse::<f64>().is_err() {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_a_spreadsheet_would_evaluate_are_made_text() {
        #[derive(serde::Serialize)]
        struct Row {
            id: &'static str,
            n: i64,
        }
        let rows = [
            Row {
                id: "=HYPERLINK(\"http://x\",\"click\")",
                n: -3,
            },
            Row { id: "+1+2", n: 4 },
            Row {
                id: "@SUM(A1)",
                n: 0,
            },
            Row { id: "\tcmd", n: 0 },
            Row { id: "-2+3", n: 0 },
            Row {
                id: "plain-id",
                n: 0,
            },
        ];
        let csv = String::from_utf8(spreadsheet_safe_csv(&rows).unwrap()).unwrap();
        let cells: Vec<Vec<String>> = csv::ReaderBuilder::new()
            .from_reader(csv.as_bytes())
            .records()
            .map(|r| r.unwrap().iter().map(String::from).collect())
            .collect();
        assert_eq!(cells[0], ["'=HYPERLINK(\"http://x\",\"click\")", "-3"]);
        assert_eq!(cells[1], ["'+1+2", "4"]);
        assert_eq!(cells[2][0], "'@SUM(A1)");
        assert_eq!(cells[3][0], "'\tcmd");
        assert_eq!(cells[4][0], "'-2+3");
        assert_eq!(cells[5][0], "plain-id");
        assert!(csv.starts_with("id,n\n"), "{csv}");
    }
}

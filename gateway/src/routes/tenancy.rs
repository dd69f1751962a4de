//! The control plane's admin routes: tenants, projects and keys changed live, and the audit log.
//! Writes go to the store (`[control_plane]`), whose rules decide what each role may do; this
//! replica reloads at once after its own write, the others within their poll interval. Reads
//! come from the directory's cached snapshot, never from the store per request, except the audit
//! log, which is only in the store.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use control_plane::{Actor, AuditQuery, ControlPlane, Snapshot, StoreError};
use policies::TenantId;
use serde_json::{json, Value};

use super::admin::{csv_response, only_known, queried_tenant, tenant_object, Format};
use crate::error::ApiError;
use crate::state::AppState;

/// A path's tenant id, or a 400.
fn tenant_id(text: &str) -> Result<TenantId, ApiError> {
    TenantId::new(text).map_err(|e| ApiError::invalid_param("tenant", e.to_string()))
}

/// A JSON body, or a 400 in OpenAI's shape.
pub(super) fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("The body is not valid JSON: {e}")))
}

/// The store's snapshot this replica serves from, or a 400 when tenants come from the file.
pub(super) fn snapshot(state: &AppState) -> Result<std::sync::Arc<Snapshot>, ApiError> {
    state
        .directory()
        .snapshot
        .clone()
        .ok_or_else(ApiError::control_plane_disabled)
}

/// `keys` as the admin API shows them, with their last use read from the store (replicas
/// write it every few seconds without bumping the version, so the cached snapshot lags; an
/// unreachable store leaves the cached figures).
async fn key_views<'a>(
    state: &AppState,
    keys: impl Iterator<Item = &'a control_plane::Key>,
) -> Vec<Value> {
    let fresh = match state.store() {
        Some(store) => store.call(|s| s.last_used()).await.ok(),
        None => None,
    };
    keys.map(|key| {
        let mut view = key.view();
        if let Some(at) = fresh.as_ref().and_then(|f| f.get(&key.id)) {
            view["last_used_at_ms"] = json!(at);
        }
        view
    })
    .collect()
}

/// The path's tenant, if the caller may read it, and the snapshot to read it from.
fn readable(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
) -> Result<(TenantId, std::sync::Arc<Snapshot>), ApiError> {
    let id = tenant_id(tenant)?;
    actor.check_read(&id)?;
    Ok((id, snapshot(state)?))
}

/// Runs a write on the store, then reloads this replica's directory so that its next read
/// shows the write.
pub(super) async fn write<T: Send + 'static>(
    state: &AppState,
    call: impl FnOnce(&ControlPlane) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state
        .store()
        .ok_or_else(ApiError::control_plane_disabled)?
        .clone();
    let written = store.call(call).await?;
    if let Err(e) = store.refresh(state.current_directory()).await {
        tracing::warn!(error = %e, "written, but this replica could not reload yet: it will at its next poll");
    }
    Ok(written)
}

fn created(value: Value) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

/// `POST /admin/tenants` (operators).
pub async fn create_tenant(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_body(&body)?;
    let tenant = write(&state, move |s| s.create_tenant(&actor, body)).await?;
    Ok(created(json!(tenant)))
}

/// `GET /admin/tenants/{tenant}`: as stored (or as the file has it), with live counters.
pub async fn get_tenant(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = tenant_id(&tenant)?;
    actor.check_read(&id)?;
    let directory = state.directory();
    let live = match directory.tenants.iter().find(|t| t.id == id) {
        Some(spec) => Some(tenant_object(&state, spec).await),
        None => None,
    };
    let stored = directory
        .snapshot
        .as_ref()
        .and_then(|s| s.tenant(&id).cloned());
    match (stored, live) {
        (Some(stored), live) => {
            let mut value = json!(stored);
            if let Some(live) = live {
                value["live"] = live["live"].clone();
            }
            Ok(Json(value))
        }
        (None, Some(live)) => Ok(Json(live)),
        (None, None) => Err(StoreError::NotFound(format!("no tenant `{id}`")).into()),
    }
}

/// `PATCH /admin/tenants/{tenant}` (operators): a JSON merge patch.
pub async fn update_tenant(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = tenant_id(&tenant)?;
    let patch = json_body(&body)?;
    let tenant = write(&state, move |s| s.update_tenant(&actor, &id, patch)).await?;
    Ok(Json(json!(tenant)))
}

/// `DELETE /admin/tenants/{tenant}` (operators): disabled; usage and audit rows stay.
pub async fn delete_tenant(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = tenant_id(&tenant)?;
    let tenant = write(&state, move |s| s.delete_tenant(&actor, &id)).await?;
    Ok(Json(json!(tenant)))
}

/// `GET /admin/tenants/{tenant}/projects`.
pub async fn list_projects(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (id, snapshot) = readable(&state, &actor, &tenant)?;
    let data: Vec<Value> = snapshot
        .projects
        .iter()
        .filter(|p| p.tenant == id)
        .map(|p| json!(p))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `POST /admin/tenants/{tenant}/projects` (operators, the tenant's admins).
pub async fn create_project(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = tenant_id(&tenant)?;
    let body = json_body(&body)?;
    let project = write(&state, move |s| s.create_project(&actor, &id, body)).await?;
    Ok(created(json!(project)))
}

/// `GET /admin/tenants/{tenant}/projects/{project}`.
pub async fn get_project(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, project)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (id, snapshot) = readable(&state, &actor, &tenant)?;
    let found = snapshot
        .project(&id, &project)
        .ok_or_else(|| StoreError::NotFound(format!("no project `{id}/{project}`")))?;
    Ok(Json(json!(found)))
}

/// `PATCH /admin/tenants/{tenant}/projects/{project}`: a JSON merge patch.
pub async fn update_project(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, project)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = tenant_id(&tenant)?;
    let patch = json_body(&body)?;
    let project = write(&state, move |s| {
        s.update_project(&actor, &id, &project, patch)
    })
    .await?;
    Ok(Json(json!(project)))
}

/// `DELETE /admin/tenants/{tenant}/projects/{project}`: disabled, its keys stop.
pub async fn delete_project(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, project)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = tenant_id(&tenant)?;
    let project = write(&state, move |s| s.delete_project(&actor, &id, &project)).await?;
    Ok(Json(json!(project)))
}

/// `GET /admin/tenants/{tenant}/keys`: the tenant's keys (never their secrets).
pub async fn list_tenant_keys(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (id, snapshot) = readable(&state, &actor, &tenant)?;
    let keys = snapshot
        .keys
        .iter()
        .filter(|k| k.tenant.as_ref() == Some(&id));
    let data = key_views(&state, keys).await;
    Ok(Json(json!({"object": "list", "data": data})))
}

fn issued(issued: control_plane::IssuedKey) -> Response {
    let mut value = issued.key.view();
    value["key"] = Value::String(issued.plaintext.expose().to_string());
    value["key_shown_once"] = Value::Bool(true);
    created(value)
}

/// `POST /admin/tenants/{tenant}/keys`: an inference or tenant-admin key; its plaintext is in
/// this response only.
pub async fn issue_tenant_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = tenant_id(&tenant)?;
    let body = json_body(&body)?;
    let key = write(&state, move |s| s.issue_key(&actor, Some(&id), body)).await?;
    Ok(issued(key))
}

/// `GET /admin/keys`: operator and auditor keys (operators, auditors).
pub async fn list_admin_keys(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    if !actor.may_read_all() {
        return Err(ApiError::forbidden(
            "Operator and auditor keys are read by operators and auditors.",
        ));
    }
    let snapshot = snapshot(&state)?;
    let keys = snapshot.keys.iter().filter(|k| k.tenant.is_none());
    let data = key_views(&state, keys).await;
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `POST /admin/keys`: an operator or auditor key (operators).
pub async fn issue_admin_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_body(&body)?;
    let key = write(&state, move |s| s.issue_key(&actor, None, body)).await?;
    Ok(issued(key))
}

/// The key `id` as the caller may see it: a tenant's key to those who read the tenant, an
/// admin key to operators and auditors. 404 and 403 alike never show the key.
fn readable_key(state: &AppState, actor: &Actor, id: &str) -> Result<control_plane::Key, ApiError> {
    let snapshot = snapshot(state)?;
    let key = snapshot.key(id);
    let allowed = match key.and_then(|k| k.tenant.as_ref()) {
        Some(tenant) => actor.may_read(tenant),
        None => actor.may_read_all(),
    };
    match (key, allowed) {
        (Some(key), true) => Ok(key.clone()),
        (Some(_), false) => Err(ApiError::forbidden(format!(
            "a {} key may not read key `{id}`",
            actor.role
        ))),
        (None, _) => Err(StoreError::NotFound(format!("no key `{id}`")).into()),
    }
}

/// `GET /admin/keys/{key}`.
pub async fn get_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = readable_key(&state, &actor, &key)?;
    let view = key_views(&state, std::iter::once(&key)).await;
    Ok(Json(view.into_iter().next().unwrap_or_default()))
}

/// `DELETE /admin/keys/{key}`: revoked on every replica within its poll interval. 503 when the
/// store cannot be reached: a revocation is never lost silently.
pub async fn revoke_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let revoked = write(&state, move |s| s.revoke_key(&actor, &key)).await?;
    Ok(Json(revoked.view()))
}

/// `POST /admin/keys/{key}/rotate` with `{"overlap_secs": N}` (default 0: the old key stops
/// now): a new key of the same scope, shown once.
pub async fn rotate_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(key): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rotate {
        #[serde(default)]
        overlap_secs: u64,
    }
    let body: Rotate = serde_json::from_value(json_body(&body)?).map_err(|e| {
        ApiError::invalid_param("overlap_secs", format!("Invalid rotation request: {e}"))
    })?;
    let overlap = Duration::from_secs(body.overlap_secs);
    let key = write(&state, move |s| s.rotate_key(&actor, &key, overlap)).await?;
    Ok(issued(key))
}

/// `GET /admin/audit?tenant=&after=&limit=&format=json|csv`: every write, oldest first. A
/// tenant-admin reads its own tenant's entries only.
pub async fn audit(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only_known(&params, &["tenant", "after", "limit", "format"])?;
    let format = Format::of(&params)?;
    let number = |name: &str| -> Result<Option<i64>, ApiError> {
        params
            .get(name)
            .map(|v| {
                v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    ApiError::invalid_param(name, format!("`{name}` must be a whole number"))
                })
            })
            .transpose()
    };
    let query = AuditQuery {
        tenant: queried_tenant(&actor, &params)?,
        after_seq: number("after")?,
        limit: number("limit")?.map(|n| n.min(10_000) as u32),
    };
    let store = state
        .store()
        .ok_or_else(ApiError::control_plane_disabled)?
        .clone();
    let entries = store.call(move |s| s.audit(&query)).await?;
    match format {
        Format::Json => Ok(Json(json!({"object": "list", "data": entries})).into_response()),
        Format::Csv => {
            // Before and after as JSON text in their cells.
            #[derive(serde::Serialize)]
            struct Row<'a> {
                seq: i64,
                at_ms: i64,
                actor_key: &'a str,
                actor_role: &'a str,
                actor_tenant: Option<&'a str>,
                address: Option<&'a str>,
                action: &'a str,
                target: &'a str,
                tenant: Option<&'a str>,
                before: Option<String>,
                after: Option<String>,
            }
            let rows: Vec<Row> = entries
                .iter()
                .map(|e| Row {
                    seq: e.seq,
                    at_ms: e.at_ms,
                    actor_key: &e.actor_key,
                    actor_role: &e.actor_role,
                    actor_tenant: e.actor_tenant.as_deref(),
                    address: e.address.as_deref(),
                    action: &e.action,
                    target: &e.target,
                    tenant: e.tenant.as_deref(),
                    before: e.before.as_ref().map(Value::to_string),
                    after: e.after.as_ref().map(Value::to_string),
                })
                .collect();
            csv_response(&rows, "audit.csv")
        }
    }
}

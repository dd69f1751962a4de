//! `/v1/files`: a tenant's files in the control-plane store (shared by every replica): batch
//! input files uploaded (multipart, `purpose=batch`, checked line by line on upload), and the
//! output and error files of its batches. Each file is its tenant's alone (another tenant's id
//! is answered as unknown), within `[batches] max_file_bytes` each and
//! `max_storage_bytes_per_tenant` together, and kept for `file_retention_hours`.

use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extensions::Caller;
use crate::openai::batches::{parse_batch_input, StoredFile};
use crate::state::AppState;
use crate::store_sync::StoreSync;

/// The kind of files in the control-plane store.
pub(crate) const KIND: &str = "file";

/// The store, or the 400 of a gateway without one.
pub(crate) fn store(state: &AppState) -> Result<&std::sync::Arc<StoreSync>, ApiError> {
    state
        .store()
        .ok_or_else(|| ApiError::needs_store("The Files and Batch APIs"))
}

/// A new file of `purpose` holding `content`, kept for `[batches] file_retention_hours` from
/// now.
pub(crate) fn new_file(
    state: &AppState,
    filename: String,
    purpose: &str,
    content: String,
) -> StoredFile {
    let created_at = control_plane::now_ms() / 1000;
    let keep = state
        .limits
        .batches
        .file_retention_hours
        .saturating_mul(3600) as i64;
    StoredFile {
        id: format!("file-{}", uuid::Uuid::new_v4().simple()),
        bytes: content.len(),
        created_at,
        expires_at: created_at.saturating_add(keep),
        filename,
        purpose: purpose.into(),
        content,
    }
}

/// `file` as `tenant`'s object in the control-plane store.
pub(crate) fn stored_object(tenant: &str, file: &StoredFile) -> control_plane::ApiObject {
    control_plane::ApiObject {
        kind: KIND.into(),
        id: file.id.clone(),
        tenant: tenant.to_string(),
        created_ms: file.created_at.saturating_mul(1000),
        expires_ms: Some(file.expires_at.saturating_mul(1000)),
        body: serde_json::to_string(file).expect("a file serialises"),
    }
}

/// Stores `file` as `tenant`'s if the tenant's files leave room for it.
pub(crate) async fn keep(
    state: &AppState,
    tenant: &str,
    file: &StoredFile,
) -> Result<(), ApiError> {
    let store = store(state)?;
    let limit = state.limits.batches.max_storage_bytes_per_tenant;
    let object = stored_object(tenant, file);
    let owner = tenant.to_string();
    let weight = object.body.len() as u64;
    let stored = store
        .call(move |s| {
            let used = s.api_object_bytes(KIND, &owner)? as u64;
            if used.saturating_add(weight) > limit {
                return Ok(Err(used));
            }
            s.put_api_object(&object).map(Ok)
        })
        .await?;
    stored.map_err(|used| {
        ApiError::invalid_request(format!(
            "This tenant's files hold {used} bytes; this one ({weight} bytes) would pass the limit of {limit}. Delete files first."
        ))
        .with_code("storage_limit_exceeded")
    })
}

/// `tenant`'s file `id`, if there is one.
pub(crate) async fn load(
    state: &AppState,
    tenant: &str,
    id: &str,
) -> Result<Option<StoredFile>, ApiError> {
    let store = store(state)?;
    let (tenant, id) = (tenant.to_string(), id.to_string());
    let now = control_plane::now_ms();
    let object = store
        .call(move |s| s.api_object(KIND, &tenant, &id, now))
        .await?;
    Ok(object.and_then(|o| serde_json::from_str(&o.body).ok()))
}

/// `POST /v1/files`: multipart with `file` and `purpose` (`batch`).
pub async fn upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    store(&state)?;
    let limit = state.limits.batches.max_file_bytes;
    let mut multipart = multipart.map_err(|e| {
        ApiError::invalid_request(format!("Expected a multipart/form-data upload: {e}"))
    })?;
    let read_error = |e: axum::extract::multipart::MultipartError| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(limit),
        _ => ApiError::invalid_request(format!("Could not read the upload: {e}")),
    };
    let (mut purpose, mut file) = (None, None);
    while let Some(field) = multipart.next_field().await.map_err(read_error)? {
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(read_error)?),
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_string();
                file = Some((name, field.bytes().await.map_err(read_error)?));
            }
            _ => {}
        }
    }
    match purpose.as_deref() {
        Some("batch") => {}
        Some(other) => {
            return Err(ApiError::invalid_param(
                "purpose",
                format!("`purpose` `{other}` is not supported; only `batch`."),
            ))
        }
        None => return Err(ApiError::invalid_param("purpose", "`purpose` is required.")),
    }
    let (filename, bytes) =
        file.ok_or_else(|| ApiError::invalid_param("file", "`file` is required."))?;
    let content = String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::invalid_param("file", "A batch file must be UTF-8 JSONL."))?;
    parse_batch_input(&content, state.limits.batches.max_lines_per_batch)?;
    let file = new_file(&state, filename, "batch", content);
    keep(&state, caller.tenant.id.as_str(), &file).await?;
    Ok(Json(file.object()))
}

/// `GET /v1/files`: the tenant's files, oldest first.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let store = store(&state)?;
    let tenant = caller.tenant.id.as_str().to_string();
    let now = control_plane::now_ms();
    let objects = store
        .call(move |s| s.api_objects(KIND, Some(&tenant), "file-", now))
        .await?;
    let data: Vec<Value> = objects
        .iter()
        .filter_map(|o| serde_json::from_str::<StoredFile>(&o.body).ok())
        .map(|f| f.object())
        .collect();
    Ok(Json(list_object(data)))
}

/// OpenAI's list object around `data`.
pub(crate) fn list_object(data: Vec<Value>) -> Value {
    json!({
        "object": "list",
        "first_id": data.first().map(|o| o["id"].clone()),
        "last_id": data.last().map(|o| o["id"].clone()),
        "has_more": false,
        "data": data,
    })
}

/// `GET /v1/files/{id}`.
pub async fn retrieve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let file = load(&state, caller.tenant.id.as_str(), &id)
        .await?
        .ok_or_else(|| ApiError::object_not_found("file", &id))?;
    Ok(Json(file.object()))
}

/// `GET /v1/files/{id}/content`: the file's bytes.
pub async fn content(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let file = load(&state, caller.tenant.id.as_str(), &id)
        .await?
        .ok_or_else(|| ApiError::object_not_found("file", &id))?;
    Ok(([(CONTENT_TYPE, "application/octet-stream")], file.content).into_response())
}

/// `DELETE /v1/files/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = store(&state)?;
    let (tenant, key) = (caller.tenant.id.as_str().to_string(), id.clone());
    match store
        .call(move |s| s.delete_api_object(KIND, &tenant, &key))
        .await?
    {
        true => Ok(Json(json!({"id": id, "object": "file", "deleted": true}))),
        false => Err(ApiError::object_not_found("file", &id)),
    }
}

//! `/admin/adapters`: the LoRA adapter registry. A tenant-admin uploads its tenant's own
//! adapters (multipart: `id`, `model`, `file`); an operator may also share one with every tenant
//! (no `tenant`) or register a file by path (JSON: `id`, `model`, `path`, inside
//! `[adapter_registry] directory`). Each file is untrusted until an engine of the model has read
//! it whole and checked every tensor against the model (a misfit is a 400 naming the tensor);
//! only then is it stored, where every replica fetches it. Deleting an adapter stops its use at
//! once and unloads it from every engine that holds it (each replica's janitor, within a
//! second of its directory reload).

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartError};
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use control_plane::{check_adapter_id, Actor, AdapterEntry, AdapterSource, Role, StoreError};
use policies::TenantId;
use serde_json::{json, Value};

use crate::adapters::{sha256_hex, write_file, Adapter, Origin};
use crate::error::ApiError;
use crate::models::ModelState;
use crate::state::AppState;

/// What a registration asks for.
struct Registration {
    id: String,
    model: String,
    tenant: Option<TenantId>,
    file: Source,
}

/// Where its file comes from.
enum Source {
    Upload(Bytes),
    Path(String),
}

/// `POST /admin/adapters`: registers an adapter (201 with it).
pub async fn register(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    request: Request,
) -> Result<Response, ApiError> {
    state
        .store()
        .ok_or_else(|| ApiError::needs_store("The adapter registry"))?;
    let registry = &state.limits.adapter_registry;
    let multipart = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let asked = match multipart {
        true => read_upload(request, &state, registry.max_file_bytes).await?,
        false => read_by_path(request, &state).await?,
    };
    let tenant = match (&asked.tenant, actor.role) {
        // A tenant-admin's adapter is its tenant's.
        (None, Role::TenantAdmin) => actor.tenant.clone(),
        (tenant, _) => tenant.clone(),
    };
    let source = match &asked.file {
        Source::Upload(_) => AdapterSource::Upload {
            file: String::new(),
        },
        Source::Path(path) => AdapterSource::Path { path: path.clone() },
    };
    // Who may register what, before any file is read.
    actor.check_adapter(tenant.as_ref(), &source)?;
    check_adapter_id(&asked.id)?;
    let directory = state.directory();
    if state.models.get(&asked.id).is_some() || directory.adapters.get(&asked.id).is_some() {
        return Err(ApiError::from(StoreError::Conflict(format!(
            "`{}` is taken by a model or an adapter: requests could not tell them apart.",
            asked.id
        )))
        .with_param("id"));
    }
    if let Some(tenant) = &tenant {
        let owned = directory.adapters.all().iter().filter(|a| {
            a.origin == Origin::Registry && a.tenant.as_deref() == Some(tenant.as_str())
        });
        if owned.count() >= registry.max_per_tenant {
            return Err(ApiError::invalid_request(format!(
                "Tenant `{tenant}` owns {} adapters, the most `[adapter_registry] max_per_tenant` allows: delete one first.",
                registry.max_per_tenant
            ))
            .with_code("adapter_limit_reached"));
        }
    }
    let engine = checking_engine(&state, &asked.model)?;
    let (bytes, sha256, source, rank) = match asked.file {
        Source::Upload(bytes) => {
            // Checked where it is kept (named by its SHA-256, so this replica never fetches it
            // back); removed again if it fails, unless an earlier upload had put it there.
            let source = AdapterSource::Upload {
                file: String::new(),
            };
            let sha256 = sha256_hex(&bytes);
            let path = crate::adapters::upload_file(&directory.adapter_cache, &sha256);
            let kept_before = path.exists();
            if kept_before {
                // Fresh again: the janitor leaves it while this registration lands.
                let _ = std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            }
            let rank =
                check_file(engine, path.clone(), (!kept_before).then(|| bytes.clone())).await;
            if rank.is_err() && !kept_before {
                let _ = std::fs::remove_file(&path);
            }
            (bytes, sha256, source, rank?)
        }
        Source::Path(path) => {
            let file = inside_directory(&state, &path)?;
            let bytes = std::fs::read(&file).map(Bytes::from).map_err(|e| {
                ApiError::invalid_param("path", format!("`{path}` cannot be read: {e}"))
            })?;
            if bytes.len() > registry.max_file_bytes {
                return Err(ApiError::payload_too_large(registry.max_file_bytes));
            }
            let rank = check_file(engine, file.clone(), None).await?;
            let source = AdapterSource::Path {
                path: file.to_string_lossy().into_owned(),
            };
            let sha256 = sha256_hex(&bytes);
            (bytes, sha256, source, rank)
        }
    };
    let file = matches!(source, AdapterSource::Upload { .. })
        .then(|| base64::engine::general_purpose::STANDARD.encode(&bytes));
    let entry = AdapterEntry {
        id: asked.id.clone(),
        model: asked.model.clone(),
        tenant: tenant.clone(),
        source,
        sha256,
        bytes: bytes.len() as u64,
        rank: rank as u32,
        created_at_ms: 0,
        deleted_at_ms: None,
    };
    let registered =
        super::tenancy::write(&state, move |s| s.register_adapter(&actor, entry, file)).await?;
    tracing::info!(adapter = %registered.id, model = %registered.model, tenant = ?registered.tenant, rank, "LoRA adapter registered");
    let view = entry_view(&state, &registered);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `GET /admin/adapters`: the adapters the caller may read (a tenant-admin: its tenant's and
/// the shared ones), configured and registered.
pub async fn list(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Json<Value> {
    let directory = state.directory();
    let data: Vec<Value> = directory
        .adapters
        .all()
        .iter()
        .filter(|a| readable(&actor, a))
        .map(|a| adapter_view(&state, a))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /admin/adapters/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let directory = state.directory();
    match directory.adapters.get(&id).filter(|a| readable(&actor, a)) {
        Some(adapter) => Ok(Json(adapter_view(&state, adapter))),
        None => Err(ApiError::object_not_found("adapter", &id)),
    }
}

/// `DELETE /admin/adapters/{id}`: no request may name it from now on; engines unload it.
pub async fn delete(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .store()
        .ok_or_else(|| ApiError::needs_store("The adapter registry"))?;
    let directory = state.directory();
    if let Some(adapter) = directory.adapters.get(&id).filter(|a| readable(&actor, a)) {
        if adapter.origin == Origin::File {
            return Err(StoreError::Conflict(format!(
                "Adapter `{id}` is declared in the configuration file: remove it there."
            ))
            .into());
        }
    }
    let deleted = super::tenancy::write(&state, {
        let id = id.clone();
        move |s| s.delete_adapter(&actor, &id)
    })
    .await?;
    unload_unserved(&state);
    tracing::info!(adapter = %id, "LoRA adapter deleted");
    Ok(Json(json!({
        "id": deleted.id,
        "object": "adapter",
        "deleted": true,
    })))
}

/// Unloads, every second, what engines hold of adapters no longer served, and removes the
/// uploaded files no live adapter names from this replica's cache (deleted on another replica:
/// this one learns it from its directory reload).
pub fn spawn_janitor(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            unload_unserved(&state);
            if state.store().is_some() {
                prune_cache(&state);
            }
        }
    });
}

fn unload_unserved(state: &AppState) {
    let directory = state.directory();
    for (model, _, model_state) in state.models.list() {
        let ModelState::Ready(router) = model_state else {
            continue;
        };
        for replica in router.replicas() {
            for id in replica.engine.loaded_adapters() {
                let served = directory
                    .adapters
                    .get(&id)
                    .is_some_and(|a| a.model == model);
                if !served {
                    replica.engine.unload_adapter(&id);
                    tracing::info!(adapter = %id, model = %model, "LoRA adapter unloaded: no longer served");
                }
            }
        }
    }
}

/// How long a cached adapter file no live adapter names is kept before the janitor removes it.
const UNLISTED_FILE_GRACE: Duration = Duration::from_secs(300);

fn prune_cache(state: &AppState) {
    let directory = state.directory();
    let Ok(files) = std::fs::read_dir(&directory.adapter_cache) else {
        return;
    };
    for file in files.flatten() {
        let path = file.path();
        let named = |a: &Adapter| a.engine.path == path;
        // Only files this registry wrote: `<sha256>.gguf`.
        let ours = path.extension().is_some_and(|e| e == "gguf")
            && path.file_stem().is_some_and(|s| {
                s.len() == 64 && s.to_string_lossy().chars().all(|c| c.is_ascii_hexdigit())
            });
        // A file this replica has just written (an upload here, a fetch before its directory
        // is swapped in) is not listed yet: only files left alone for a while go.
        let settled = file
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > UNLISTED_FILE_GRACE));
        if ours && settled && !directory.adapters.all().iter().any(named) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Whether `actor` may read `adapter`: operators and auditors all; a tenant-admin its tenant's
/// and the shared ones.
fn readable(actor: &Actor, adapter: &Adapter) -> bool {
    match &adapter.tenant {
        Some(tenant) => tenant.parse::<TenantId>().is_ok_and(|t| actor.may_read(&t)),
        None => actor.role.is_admin(),
    }
}

/// How the admin API shows an adapter.
fn adapter_view(state: &AppState, adapter: &Adapter) -> Value {
    let entry = state.directory().snapshot.as_ref().and_then(|s| {
        s.adapters
            .iter()
            .find(|e| e.is_live() && e.id == adapter.engine.id)
            .cloned()
    });
    match (adapter.origin, entry) {
        (Origin::Registry, Some(entry)) => entry_view(state, &entry),
        _ => json!({
            "id": adapter.engine.id,
            "object": "adapter",
            "model": adapter.model,
            "tenant": adapter.tenant,
            "origin": adapter.origin.as_str(),
            "source": {"kind": "path", "path": adapter.engine.path},
            "loaded_replicas": loaded_replicas(state, &adapter.model, &adapter.engine.id),
        }),
    }
}

fn entry_view(state: &AppState, entry: &AdapterEntry) -> Value {
    let mut view = json!(entry);
    view["object"] = json!("adapter");
    view["origin"] = json!(Origin::Registry.as_str());
    view["loaded_replicas"] = json!(loaded_replicas(state, &entry.model, &entry.id));
    view
}

/// How many of this process's replicas of `model` hold adapter `id` loaded.
fn loaded_replicas(state: &AppState, model: &str, id: &str) -> usize {
    match state.models.get(model) {
        Some(ModelState::Ready(router)) => router
            .replicas()
            .filter(|r| r.engine.loaded_adapters().iter().any(|l| l == id))
            .count(),
        _ => 0,
    }
}

/// An engine of `model` in this process, to read a file against it.
fn checking_engine(state: &AppState, model: &str) -> Result<Arc<dyn engine_api::Engine>, ApiError> {
    match state.models.get(model) {
        Some(ModelState::Ready(router)) => router
            .replicas()
            .next()
            .map(|r| r.engine.clone())
            .ok_or_else(|| ApiError::no_replica(model, "no replica of it runs in this process")),
        Some(ModelState::Loading) => Err(ApiError::model_not_ready(model)),
        Some(_) | None => Err(ApiError::invalid_param(
            "model",
            format!("`{model}` is not a generation model served here: an adapter adapts one."),
        )),
    }
}

/// Reads the file at `path` (written there first from `bytes`, an upload's new file) against
/// `engine`'s model: its rank. A misfit is the request's 400, naming the tensor.
async fn check_file(
    engine: Arc<dyn engine_api::Engine>,
    path: PathBuf,
    bytes: Option<Bytes>,
) -> Result<usize, ApiError> {
    tokio::task::spawn_blocking(move || {
        if let Some(bytes) = bytes {
            write_file(&path, &bytes).map_err(|e| {
                ApiError::server_fault(
                    "The adapter could not be checked on this replica.",
                    format!("{}: {e}", path.display()),
                )
            })?;
        }
        engine.check_adapter(&path).map_err(|e| {
            let why = match e {
                engine_api::EngineError::InvalidInput(why) => why,
                other => other.to_string(),
            };
            ApiError::invalid_param("file", format!("Not an adapter for this model: {why}"))
                .with_code("invalid_adapter")
        })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}

/// `path`, resolved, if it lies inside `[adapter_registry] directory`.
fn inside_directory(state: &AppState, path: &str) -> Result<PathBuf, ApiError> {
    let Some(directory) = &state.limits.adapter_registry.directory else {
        return Err(ApiError::invalid_param(
            "path",
            "This gateway has no `[adapter_registry] directory`: adapters can only be uploaded.",
        ));
    };
    let outside = || {
        ApiError::invalid_param(
            "path",
            format!(
                "`{path}` is not a file inside the adapter directory `{}`.",
                directory.display()
            ),
        )
    };
    let resolved = std::fs::canonicalize(FsPath::new(path)).map_err(|_| outside())?;
    let root = std::fs::canonicalize(directory).map_err(|_| outside())?;
    match resolved.starts_with(&root) && resolved.is_file() {
        true => Ok(resolved),
        false => Err(outside()),
    }
}

/// A multipart upload: `id`, `model`, optional `tenant`, and `file`.
async fn read_upload(
    request: Request,
    state: &AppState,
    limit: usize,
) -> Result<Registration, ApiError> {
    let mut multipart = Multipart::from_request(request, state).await.map_err(|e| {
        ApiError::invalid_request(format!("Expected a multipart/form-data upload: {e}"))
    })?;
    let read_error = |e: MultipartError| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(limit),
        _ => ApiError::invalid_request(format!("Could not read the upload: {e}")),
    };
    let (mut id, mut model, mut tenant, mut file) = (None, None, None, None);
    while let Some(field) = multipart.next_field().await.map_err(read_error)? {
        match field.name() {
            Some("id") => id = Some(field.text().await.map_err(read_error)?),
            Some("model") => model = Some(field.text().await.map_err(read_error)?),
            Some("tenant") => tenant = Some(field.text().await.map_err(read_error)?),
            Some("file") => file = Some(field.bytes().await.map_err(read_error)?),
            _ => {}
        }
    }
    let file = file.ok_or_else(|| ApiError::invalid_param("file", "`file` is required."))?;
    if file.len() > limit {
        return Err(ApiError::payload_too_large(limit));
    }
    Ok(Registration {
        id: id.ok_or_else(|| ApiError::invalid_param("id", "`id` is required."))?,
        model: model.ok_or_else(|| ApiError::invalid_param("model", "`model` is required."))?,
        tenant: tenant
            .filter(|t| !t.is_empty())
            .map(|t| parse_tenant(&t))
            .transpose()?,
        file: Source::Upload(file),
    })
}

/// A JSON registration by path: `{"id", "model", "path", "tenant"?}`.
async fn read_by_path(request: Request, state: &AppState) -> Result<Registration, ApiError> {
    let body = Bytes::from_request(request, state)
        .await
        .map_err(|e| ApiError::invalid_request(format!("Could not read the body: {e}")))?;
    let body: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid_request(format!(
            "Expected a multipart/form-data upload, or JSON with `id`, `model` and `path`: {e}"
        ))
    })?;
    let text = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::invalid_param(name, format!("`{name}` is required (a string)."))
            })
    };
    Ok(Registration {
        id: text("id")?,
        model: text("model")?,
        tenant: match body.get("tenant").and_then(Value::as_str) {
            Some(t) => Some(parse_tenant(t)?),
            None => None,
        },
        file: Source::Path(text("path")?),
    })
}

fn parse_tenant(text: &str) -> Result<TenantId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::invalid_param("tenant", format!("`{text}` is not a tenant id.")))
}

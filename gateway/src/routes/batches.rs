//! `/v1/batches`: a tenant hands over a file of requests; the replicas run them in the `batch`
//! priority class as backfill (`routes::batch_runner`), and the results come back as output and
//! error files. Batches, their lines' results and a cancel's mark live in the control-plane
//! store, so any replica answers for them and one takes a batch over from another.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::files::{self, list_object};
use crate::error::ApiError;
use crate::extensions::Caller;
use crate::openai::batches::{
    batch_object, parse_batch_input, status, StoredBatch, BATCH_ENDPOINTS,
};
use crate::openai::json::JsonBody;
use crate::state::AppState;

/// The kinds of the store's objects.
pub(crate) const KIND: &str = "batch";
/// A cancel asked for (kept apart from the batch, which its runner writes).
pub(crate) const CANCEL_KIND: &str = "batch_cancel";
/// One line's result: `{batch id}:{index}`.
pub(crate) const LINE_KIND: &str = "batch_line";

/// `POST /v1/batches` body.
#[derive(Debug, Deserialize)]
pub struct CreateBatch {
    /// A `batch` file of the caller's tenant.
    pub input_file_id: String,
    /// What every line calls.
    pub endpoint: String,
    /// `24h` (OpenAI's), or any number of hours from 1 to 168.
    pub completion_window: String,
    /// Up to 16 string pairs, echoed.
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// `POST /v1/batches`.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(request): JsonBody<CreateBatch>,
) -> Result<Json<Value>, ApiError> {
    let store = files::store(&state)?.clone();
    let tenant = caller.tenant.id.as_str().to_string();
    if !BATCH_ENDPOINTS.contains(&request.endpoint.as_str()) {
        return Err(ApiError::invalid_param(
            "endpoint",
            format!(
                "`{}` is not an endpoint batches can call; expected one of {}.",
                request.endpoint,
                BATCH_ENDPOINTS.join(", ")
            ),
        ));
    }
    let hours = window_hours(&request.completion_window)?;
    let file = files::load(&state, &tenant, &request.input_file_id)
        .await?
        .ok_or_else(|| {
            ApiError::object_not_found("file", &request.input_file_id).with_param("input_file_id")
        })?;
    if file.purpose != "batch" {
        return Err(ApiError::invalid_param(
            "input_file_id",
            "Only a file of purpose `batch` can be a batch's input.",
        ));
    }
    let lines = parse_batch_input(&file.content, state.limits.batches.max_lines_per_batch)?;
    if let Some((number, line)) = lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.url != request.endpoint)
    {
        return Err(ApiError::invalid_param(
            "input_file_id",
            format!(
                "Line {}: `url` `{}` differs from the batch's endpoint `{}`.",
                number + 1,
                line.url,
                request.endpoint
            ),
        ));
    }
    let most = state.limits.batches.max_open_batches_per_tenant;
    let owner = tenant.clone();
    let open = store
        .call(move |s| s.api_objects(KIND, Some(&owner), "batch_", control_plane::now_ms()))
        .await?
        .iter()
        .filter_map(|o| serde_json::from_str::<StoredBatch>(&o.body).ok())
        .filter(|b| status::is_open(b.status()))
        .count();
    if open >= most {
        return Err(ApiError::invalid_request(format!(
            "This tenant has {open} open batches, the most allowed; wait for one to end or cancel one."
        ))
        .with_code("too_many_open_batches"));
    }
    let now = control_plane::now_ms() / 1000;
    let id = format!("batch_{}", uuid::Uuid::new_v4().simple());
    let mut object = batch_object(
        &id,
        &request.endpoint,
        &file.id,
        &request.completion_window,
        now,
        now + hours * 3600,
        request.metadata,
    );
    object["request_counts"]["total"] = json!(lines.len());
    let batch = StoredBatch {
        object: object.clone(),
        key_id: caller.key_id.as_str().to_string(),
    };
    put(&store, &tenant, &batch).await?;
    Ok(Json(object))
}

/// `24h`, or `<n>h` for n in 1..=168.
fn window_hours(window: &str) -> Result<i64, ApiError> {
    window
        .strip_suffix('h')
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| (1..=168).contains(n))
        .ok_or_else(|| {
            ApiError::invalid_param(
                "completion_window",
                "`completion_window` must be `24h` (or from `1h` to `168h`).",
            )
        })
}

/// Writes `batch` (its files and results are kept as long as the files).
pub(crate) async fn put(
    store: &crate::store_sync::StoreSync,
    tenant: &str,
    batch: &StoredBatch,
) -> Result<(), ApiError> {
    let object = control_plane::ApiObject {
        kind: KIND.into(),
        id: batch.id().to_string(),
        tenant: tenant.to_string(),
        created_ms: batch.object["created_at"].as_i64().unwrap_or(0) * 1000,
        expires_ms: None,
        body: serde_json::to_string(batch).expect("a batch serialises"),
    };
    store.call(move |s| s.put_api_object(&object)).await?;
    Ok(())
}

/// `tenant`'s batch `id` as a client sees it (a cancel asked for shows as `cancelling`).
async fn view(state: &AppState, tenant: &str, id: &str) -> Result<Value, ApiError> {
    let store = files::store(state)?;
    let (owner, key) = (tenant.to_string(), id.to_string());
    let now = control_plane::now_ms();
    let (batch, cancel) = store
        .call(move |s| {
            Ok((
                s.api_object(KIND, &owner, &key, now)?,
                s.api_object(CANCEL_KIND, &owner, &key, now)?,
            ))
        })
        .await?;
    let batch: StoredBatch = batch
        .and_then(|o| serde_json::from_str(&o.body).ok())
        .ok_or_else(|| ApiError::object_not_found("batch", id))?;
    Ok(shown(batch, cancel))
}

/// The object of `batch`, with a cancel asked for (`cancel`) that its runner has not yet
/// acted on.
fn shown(batch: StoredBatch, cancel: Option<control_plane::ApiObject>) -> Value {
    let mut object = batch.object;
    if let Some(cancel) = cancel {
        if [status::VALIDATING, status::IN_PROGRESS]
            .contains(&object["status"].as_str().unwrap_or_default())
        {
            object["status"] = json!(status::CANCELLING);
            object["cancelling_at"] = json!(cancel.created_ms / 1000);
        }
    }
    object
}

/// `GET /v1/batches/{id}`.
pub async fn retrieve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    view(&state, caller.tenant.id.as_str(), &id).await.map(Json)
}

/// `GET /v1/batches`: the tenant's batches, newest first.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let store = files::store(&state)?;
    let tenant = caller.tenant.id.as_str().to_string();
    let now = control_plane::now_ms();
    let (batches, cancels) = store
        .call(move |s| {
            Ok((
                s.api_objects(KIND, Some(&tenant), "batch_", now)?,
                s.api_objects(CANCEL_KIND, Some(&tenant), "batch_", now)?,
            ))
        })
        .await?;
    let mut data: Vec<Value> = batches
        .iter()
        .filter_map(|o| serde_json::from_str::<StoredBatch>(&o.body).ok())
        .map(|b| {
            let cancel = cancels.iter().find(|c| c.id == b.id()).cloned();
            shown(b, cancel)
        })
        .collect();
    data.reverse();
    Ok(Json(list_object(data)))
}

/// `POST /v1/batches/{id}/cancel`: lines not yet started do not run; those running finish;
/// the batch ends `cancelled` with the results so far.
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant.id.as_str().to_string();
    let object = view(&state, &tenant, &id).await?;
    let now = control_plane::now_ms();
    if status::is_open(object["status"].as_str().unwrap_or_default()) {
        let mark = control_plane::ApiObject {
            kind: CANCEL_KIND.into(),
            id: id.clone(),
            tenant: tenant.clone(),
            created_ms: now,
            expires_ms: None,
            body: "{}".into(),
        };
        files::store(&state)?
            .call(move |s| s.put_api_object(&mark))
            .await?;
    } else {
        return Err(ApiError::invalid_request(format!(
            "Batch `{id}` is `{}`: only an open batch can be cancelled.",
            object["status"].as_str().unwrap_or_default()
        ))
        .with_code("batch_not_open"));
    }
    view(&state, &tenant, &id).await.map(Json)
}

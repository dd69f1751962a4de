//! `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`: OpenAI's Responses API over
//! the chat pipeline. The request (after the stored history of its `previous_response_id`, if
//! it continues one) is translated into a chat body ([`crate::openai::responses`]), then
//! validated, admitted, routed and accounted exactly as a chat request (its ledger record says
//! `api = responses`); the answer is shaped as a response object or its typed event stream.
//! With `store` (the default) the response and its history are kept in the control-plane
//! store, readable by its tenant only, for `[control_plane] responses_retention_hours`.

use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::generation::handlers::{start_chat, Started};
use super::generation::one_choice::{OneChoice, Piece};
use super::generation::respond::{sse_response, SseWriter};
use super::pipeline::{self, Incoming};
use crate::error::ApiError;
use crate::extensions::{AccessLogWritten, Caller};
use crate::openai::json::parse;
use crate::openai::response::{ChoiceEnd, UsageBody};
use crate::openai::responses::{
    call_item, item_id, message_item, status_of, text_part, ResponseDraft, ResponsesRequest,
};
use crate::state::AppState;
use crate::store_sync::StoreSync;

/// The kind of stored responses in the control-plane store.
const KIND: &str = "response";

/// `POST /v1/responses`.
pub async fn create(State(state): State<AppState>, request: Request) -> Response {
    let incoming = match pipeline::read(&state, request).await {
        Ok(incoming) => incoming,
        Err(error) => return error.into_response(),
    };
    let response = serve(&state, &incoming).await;
    incoming.label(response.unwrap_or_else(IntoResponse::into_response))
}

/// Where a finished response is kept: the store, the tenant, and the history it continues
/// (its input items included).
struct Keeping {
    store: std::sync::Arc<StoreSync>,
    tenant: String,
    history: Vec<Value>,
    /// How many items of `history` came from the previous response (the rest is this one's
    /// input).
    inherited: usize,
}

impl Keeping {
    /// Stores `object` with the history extended by its output; a store that fails is logged
    /// (the answer is already billed and is sent all the same).
    async fn keep(self, object: &Value) {
        let mut history = self.history;
        history.extend(object["output"].as_array().cloned().unwrap_or_default());
        let now = control_plane::now_ms();
        let retention = self.store.responses_retention().as_millis() as i64;
        let stored = control_plane::ApiObject {
            kind: KIND.into(),
            id: object["id"].as_str().unwrap_or_default().to_string(),
            tenant: self.tenant,
            created_ms: now,
            expires_ms: Some(now.saturating_add(retention)),
            body: json!({"response": object, "history": history, "inherited": self.inherited})
                .to_string(),
        };
        if let Err(e) = self.store.call(move |s| s.put_api_object(&stored)).await {
            tracing::warn!(error = %e, "a response could not be stored");
        }
    }
}

async fn serve(state: &AppState, incoming: &Incoming) -> Result<Response, ApiError> {
    let request: ResponsesRequest = parse(&incoming.body)?;
    request.check()?;
    let tenant = incoming.caller.tenant.id.as_str().to_string();
    let mut history = match &request.previous_response_id {
        None => Vec::new(),
        Some(previous) => {
            let store = state
                .store()
                .ok_or_else(|| ApiError::needs_store("`previous_response_id`"))?;
            let stored = load(store, &tenant, previous).await?.ok_or_else(|| {
                ApiError::object_not_found("response", previous).with_param("previous_response_id")
            })?;
            match stored["history"].as_array() {
                Some(items) => items.clone(),
                None => Vec::new(),
            }
        }
    };
    let inherited = history.len();
    history.extend(request.input_items()?);
    let chat = serde_json::to_vec(&request.to_chat(&history)?).expect("JSON serialises");
    // Without a store nothing can be kept: the response says `store: false`.
    let keeping = match (request.stored(), state.store()) {
        (true, Some(store)) => Some(Keeping {
            store: store.clone(),
            tenant,
            history,
            inherited,
        }),
        _ => None,
    };
    let draft = ResponseDraft::new(&request, keeping.is_some());
    let started = start_chat(state, incoming, &chat, ledger::Api::Responses).await?;
    let limits = started.limits.clone();
    let mut response = match request.streamed() {
        true => stream(draft, started, keeping),
        false => whole(draft, started, keeping).await?,
    };
    response.extensions_mut().insert(AccessLogWritten);
    Ok(pipeline::with_limits(response, limits))
}

/// The output items of a finished answer.
fn output_items(text: &str, calls: Option<&[crate::openai::tools::ToolCall]>) -> Vec<Value> {
    let mut output = Vec::new();
    if !text.is_empty() {
        output.push(message_item(&item_id("msg"), text, "completed"));
    }
    for call in calls.unwrap_or_default() {
        output.push(call_item(&item_id("fc"), call, "completed"));
    }
    output
}

/// The response, whole.
async fn whole(
    draft: ResponseDraft,
    started: Started,
    keeping: Option<Keeping>,
) -> Result<Response, ApiError> {
    let model = started.meta.model.clone();
    let answer = OneChoice::new(started.relay, started.tools)
        .whole()
        .await
        .map_err(|failure| failure.to_error(&model))?;
    let output = output_items(&answer.text, answer.calls.as_deref());
    let object = draft.object(status_of(answer.end), &output, Some(&answer.usage));
    if let Some(keeping) = keeping {
        keeping.keep(&object).await;
    }
    Ok(Json(object).into_response())
}

/// The stream's events, numbered in order.
struct Events {
    sse: SseWriter,
    sequence: u64,
}

impl Events {
    fn emit(&mut self, kind: &str, mut event: Value) {
        event["type"] = json!(kind);
        event["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        self.sse.named(kind, &event);
    }
}

/// The response as the Responses API's typed events: `response.created`,
/// `response.in_progress`, per output item `response.output_item.added` ... `.done` (a message's
/// `content_part` and `output_text` deltas, a call's `function_call_arguments`), then
/// `response.completed` (or `.incomplete`, or `.failed` with the error).
fn stream(draft: ResponseDraft, started: Started, keeping: Option<Keeping>) -> Response {
    let model = started.meta.model.clone();
    let mut answer = OneChoice::new(started.relay, started.tools);
    sse_response(async_stream::stream! {
        let mut events = Events { sse: SseWriter::new(), sequence: 0 };
        let mut output: Vec<Value> = Vec::new();
        events.emit("response.created", json!({"response": draft.object("in_progress", &[], None)}));
        events.emit("response.in_progress", json!({"response": draft.object("in_progress", &[], None)}));
        if let Some(frame) = events.sse.take() {
            yield frame;
        }
        // The message being written: its id and text so far.
        let mut open: Option<(String, String)> = None;
        let mut end = ChoiceEnd::Engine(engine_api::FinishReason::Stop);
        let failure = loop {
            match answer.next().await {
                Ok(Some(Piece::Text(text))) => {
                    let index = output.len();
                    let (id, so_far) = open.get_or_insert_with(|| {
                        let id = item_id("msg");
                        events.emit("response.output_item.added", json!({
                            "output_index": index, "item": message_item(&id, "", "in_progress"),
                        }));
                        events.emit("response.content_part.added", json!({
                            "item_id": id, "output_index": index, "content_index": 0, "part": text_part(""),
                        }));
                        (id, String::new())
                    });
                    so_far.push_str(&text);
                    events.emit("response.output_text.delta", json!({
                        "item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": [],
                    }));
                }
                Ok(Some(Piece::Calls(calls))) => {
                    close_message(&mut events, &mut open, &mut output);
                    for call in &calls {
                        let index = output.len();
                        let id = item_id("fc");
                        events.emit("response.output_item.added", json!({
                            "output_index": index, "item": call_item(&id, call, "in_progress"),
                        }));
                        events.emit("response.function_call_arguments.delta", json!({
                            "item_id": id, "output_index": index, "delta": call.arguments,
                        }));
                        events.emit("response.function_call_arguments.done", json!({
                            "item_id": id, "output_index": index, "name": call.name, "arguments": call.arguments,
                        }));
                        let item = call_item(&id, call, "completed");
                        events.emit("response.output_item.done", json!({"output_index": index, "item": item}));
                        output.push(item);
                    }
                }
                Ok(Some(Piece::End(e))) => end = e,
                Ok(None) => break None,
                Err(failure) => break Some(failure),
            }
            if let Some(frame) = events.sse.take() {
                yield frame;
            }
        };
        match failure {
            Some(failure) => {
                let error = failure.to_error(&model);
                events.emit("response.failed", json!({"response": draft.failed(&output, &error)}));
            }
            None => {
                close_message(&mut events, &mut open, &mut output);
                // Committed to the ledger (and stored) before the last event.
                let usage: UsageBody = answer.complete().await;
                let status = status_of(end);
                let object = draft.object(status, &output, Some(&usage));
                if let Some(keeping) = keeping {
                    keeping.keep(&object).await;
                }
                let kind = match status {
                    "incomplete" => "response.incomplete",
                    _ => "response.completed",
                };
                events.emit(kind, json!({"response": object}));
            }
        }
        if let Some(frame) = events.sse.take() {
            yield frame;
        }
    })
}

/// Ends the message being written, if one is: its `.done` events, and it joins the output.
fn close_message(
    events: &mut Events,
    open: &mut Option<(String, String)>,
    output: &mut Vec<Value>,
) {
    let Some((id, text)) = open.take() else {
        return;
    };
    let index = output.len();
    events.emit(
        "response.output_text.done",
        json!({
            "item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": [],
        }),
    );
    events.emit(
        "response.content_part.done",
        json!({
            "item_id": id, "output_index": index, "content_index": 0, "part": text_part(&text),
        }),
    );
    let item = message_item(&id, &text, "completed");
    events.emit(
        "response.output_item.done",
        json!({"output_index": index, "item": item}),
    );
    output.push(item);
}

/// The stored response `id` of `tenant` (`{"response", "history"}`), if there is one.
async fn load(store: &StoreSync, tenant: &str, id: &str) -> Result<Option<Value>, ApiError> {
    let (tenant, id) = (tenant.to_string(), id.to_string());
    let now = control_plane::now_ms();
    let stored = store
        .call(move |s| s.api_object(KIND, &tenant, &id, now))
        .await?;
    Ok(stored.and_then(|o| serde_json::from_str(&o.body).ok()))
}

/// `GET /v1/responses/{id}`: a stored response of the caller's tenant.
pub async fn retrieve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut stored = stored_response(&state, &caller, &id).await?;
    Ok(Json(stored["response"].take()))
}

/// The caller's tenant's stored response `id` (`{"response", "history", "inherited"}`): 400
/// without a store, 404 if there is none of this tenant's.
async fn stored_response(state: &AppState, caller: &Caller, id: &str) -> Result<Value, ApiError> {
    let store = state
        .store()
        .ok_or_else(|| ApiError::needs_store("Reading a response"))?;
    load(store, caller.tenant.id.as_str(), id)
        .await?
        .ok_or_else(|| ApiError::object_not_found("response", id))
}

/// `GET /v1/responses/{id}/input_items`: the items a stored response of the caller's tenant
/// was made from (its own input, not what it inherited through `previous_response_id`), as
/// OpenAI lists them (`order=desc`, the default, or `asc`).
pub async fn input_items(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<ItemsQuery>,
) -> Result<Json<Value>, ApiError> {
    let stored = stored_response(&state, &caller, &id).await?;
    let history = stored["history"].as_array().cloned().unwrap_or_default();
    let outputs = stored["response"]["output"].as_array().map_or(0, Vec::len);
    let inherited = stored["inherited"].as_u64().unwrap_or(0) as usize;
    let own = history.len().saturating_sub(outputs);
    let mut items: Vec<Value> = history[inherited.min(own)..own]
        .iter()
        .enumerate()
        .filter_map(|(i, item)| item_resource(&id, inherited + i, item))
        .collect();
    match query.order.as_deref() {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(other) => {
            return Err(ApiError::invalid_param(
                "order",
                format!("`order` must be `asc` or `desc`, not `{other}`."),
            ))
        }
    }
    Ok(Json(json!({
        "object": "list",
        "first_id": items.first().map_or(json!(""), |i| i["id"].clone()),
        "last_id": items.last().map_or(json!(""), |i| i["id"].clone()),
        "has_more": false,
        "data": items,
    })))
}

/// `input_items`' query.
#[derive(Debug, serde::Deserialize)]
pub struct ItemsQuery {
    /// `asc` or `desc` (default).
    order: Option<String>,
}

/// An input item as OpenAI lists it: with an id (stable: the response's and the item's place)
/// and a status, text as content parts. Reasoning items are not listed.
fn item_resource(response: &str, index: usize, item: &Value) -> Option<Value> {
    let id = |prefix: &str| {
        item["id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{prefix}_{}_{index}", response.trim_start_matches("resp_")))
    };
    let text = |content: &Value| match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    };
    match crate::openai::responses::item_kind(item) {
        "message" if item["role"] == "assistant" => Some(json!({
            "type": "message", "id": id("msg"), "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text(&item["content"]), "annotations": []}],
        })),
        "message" => Some(json!({
            "type": "message", "id": id("msg"), "role": item["role"], "status": "completed",
            "content": [{"type": "input_text", "text": text(&item["content"])}],
        })),
        "function_call" => Some(json!({
            "type": "function_call", "id": id("fc"), "call_id": item["call_id"],
            "name": item["name"], "arguments": item["arguments"], "status": "completed",
        })),
        "function_call_output" => Some(json!({
            "type": "function_call_output", "id": id("fco"), "call_id": item["call_id"],
            "output": text(&item["output"]), "status": "completed",
        })),
        _ => None,
    }
}

/// `DELETE /v1/responses/{id}`: deletes a stored response of the caller's tenant.
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = state
        .store()
        .ok_or_else(|| ApiError::needs_store("Deleting a response"))?;
    let (tenant, key) = (caller.tenant.id.as_str().to_string(), id.clone());
    let deleted = store
        .call(move |s| s.delete_api_object(KIND, &tenant, &key))
        .await?;
    match deleted {
        true => Ok(Json(
            json!({"id": id, "object": "response.deleted", "deleted": true}),
        )),
        false => Err(ApiError::object_not_found("response", &id)),
    }
}

//! `POST /v1/embeddings`: sentence vectors from an embedding model. Its handler is the same
//! pipeline as the generation routes': read the request, validate and size it (its inputs
//! tokenised: the token count is what quotas and the ledger charge), admit it, run it, and
//! settle its account (one ledger record, prompt tokens only). A model on remote pools sends the input upstream as
//! given: its size is estimated for admission, and the record has the upstream's count.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use ledger::RecordStatus;
use policies::Admission;
use serde_json::{json, Value};

use crate::accounting::{BilledPrompt, RequestAccount};
use crate::error::ApiError;
use crate::extensions::{AccessLogWritten, Caller, RateLimitSnapshot};
use crate::models::{Embedder, ModelState, RemoteEmbedder};
use crate::openai::embeddings::{EmbeddingRequest, EncodingFormat, Input};
use crate::openai::json::parse;
use crate::routes::pipeline::{self, Incoming, RequestCost};
use crate::state::AppState;
use embeddings::EmbeddingModel;

/// An embedding request ready to run.
pub struct PreparedEmbedding {
    model_id: String,
    work: Work,
    format: EncodingFormat,
}

/// What the handler runs.
enum Work {
    /// The local model, on these token ids.
    Local(Arc<EmbeddingModel>, Vec<Vec<u32>>),
    /// Remote replicas, on the client's `input` as sent (and its `dimensions`).
    Remote(Arc<RemoteEmbedder>, Value, Option<u64>),
}

/// `POST /v1/embeddings`: read, validate and size, admit, embed, settle.
pub async fn embed(State(state): State<AppState>, request: Request) -> Response {
    let incoming = match pipeline::read(&state, request).await {
        Ok(incoming) => incoming,
        Err(error) => return error.into_response(),
    };
    let response = async {
        let model = incoming.model_state();
        let (prepared, cost) = prepare_embedding(&incoming.caller, &incoming.body, model)?;
        let (admission, hold) =
            pipeline::admit(&state, &incoming.caller, &prepared.model_id, cost).await?;
        let limits = RateLimitSnapshot(admission.status.clone());
        let response = run(&state, &incoming, cost, prepared, admission, hold).await?;
        Ok::<_, ApiError>(pipeline::with_limits(response, limits))
    };
    incoming.label(response.await.unwrap_or_else(IntoResponse::into_response))
}

/// Parses, resolves the model, tokenises and sizes.
fn prepare_embedding(
    caller: &Caller,
    body: &[u8],
    model_state: Option<ModelState>,
) -> Result<(PreparedEmbedding, RequestCost), ApiError> {
    let request: EmbeddingRequest = parse(body)?;
    let id = request.model.as_str();
    // A model outside the tenant's allow-list is answered as one that does not exist.
    let model_state = model_state
        .filter(|_| caller.may_use(id))
        .ok_or_else(|| ApiError::model_not_found(id))?;
    let embedder = match model_state {
        ModelState::Embeddings(embedder) => embedder,
        ModelState::Ready(_) => {
            return Err(ApiError::invalid_param(
                "model",
                format!(
                "`{id}` is not an embedding model; use /v1/chat/completions or /v1/completions."
            ),
            )
            .with_code("model_not_supported"))
        }
        ModelState::Loading => return Err(ApiError::model_not_ready(id)),
        ModelState::Failed(reason) => {
            return Err(ApiError::server_fault(
                format!("The model `{id}` failed to load."),
                reason,
            ))
        }
    };
    let (work, tokens) = match embedder.as_ref() {
        Embedder::Local(model) => local_work(model, &request)?,
        Embedder::Remote(remote) => {
            // The upstream tokenises; four bytes a token for admission (as for prompts).
            let inputs = request.inputs()?;
            if inputs.iter().any(|i| matches!(i, Input::Text(""))) {
                return Err(empty_input());
            }
            let tokens: u64 = inputs
                .iter()
                .map(|i| match i {
                    Input::Text(text) => text.len().div_ceil(4) as u64,
                    Input::Tokens(ids) => ids.len() as u64,
                })
                .sum();
            /// The client's `input` as sent, for the upstream.
            #[derive(serde::Deserialize)]
            struct AsSent {
                input: Value,
            }
            let input = parse::<AsSent>(body)?.input;
            let work = Work::Remote(remote.clone(), input, request.dimensions);
            (work, tokens)
        }
    };
    let prepared = PreparedEmbedding {
        model_id: request.model,
        work,
        format: request.encoding_format.unwrap_or_default(),
    };
    let cost = RequestCost {
        prompt_tokens: tokens,
        reserved_tokens: tokens,
        shortenable_to: None,
    };
    Ok((prepared, cost))
}

fn empty_input() -> ApiError {
    ApiError::invalid_param("input", "An input must not be an empty string.")
}

/// The local model's work: `dimensions` checked, every input tokenised and checked; with its
/// token count.
fn local_work(
    model: &Arc<EmbeddingModel>,
    request: &EmbeddingRequest,
) -> Result<(Work, u64), ApiError> {
    let id = request.model.as_str();
    if let Some(dimensions) = request.dimensions {
        if dimensions != model.dimensions() as u64 {
            return Err(ApiError::invalid_param(
                "dimensions",
                format!(
                    "`{id}` makes vectors of {} dimensions; `dimensions` cannot change that.",
                    model.dimensions()
                ),
            ));
        }
    }
    let mut inputs = Vec::new();
    for input in request.inputs()? {
        let ids = match input {
            Input::Text("") => return Err(empty_input()),
            Input::Text(text) => model.tokenize(text)?,
            Input::Tokens(ids) => ids.to_vec(),
        };
        if let Err(message) = model.check_input(&ids) {
            let code = match ids.len() > model.max_input_tokens() {
                true => "context_length_exceeded",
                false => "invalid_value",
            };
            return Err(ApiError::invalid_param("input", message.to_string()).with_code(code));
        }
        inputs.push(ids);
    }
    let tokens: u64 = inputs.iter().map(|ids| ids.len() as u64).sum();
    Ok((Work::Local(model.clone(), inputs), tokens))
}

/// Embeds, settles the account (ledger record before the response), answers.
async fn run(
    state: &AppState,
    incoming: &Incoming,
    cost: RequestCost,
    prepared: PreparedEmbedding,
    admission: Admission,
    hold: Option<crate::store_sync::AllowanceHold>,
) -> Result<Response, ApiError> {
    // A remote upstream counts the input itself; admission could only estimate it.
    let billed = BilledPrompt {
        tokens: cost.prompt_tokens,
        estimated: matches!(prepared.work, Work::Remote(..)),
    };
    let mut account = RequestAccount::new(
        state,
        &incoming.caller,
        &incoming.request_id,
        incoming.client_request_id.as_ref(),
        &prepared.model_id,
        &[billed],
        admission,
    )
    .through(ledger::Api::Embeddings)
    .holding(hold);
    let outcome = match prepared.work {
        Work::Local(model, inputs) => {
            account.on_routed("local", &Arc::from("cpu"));
            model
                .embed(inputs)
                .await
                .map(|v| (v, cost.prompt_tokens))
                .map_err(ApiError::from)
        }
        Work::Remote(remote, input, dimensions) => {
            match remote.embed(&input, dimensions).await {
                Ok((answer, pool, replica)) => {
                    account.on_routed(&pool, &replica);
                    // The upstream's count is billed (the estimate, marked, when it says
                    // nothing).
                    let counted = answer.prompt_tokens.map(|n| n as u64);
                    account.on_prompt_counted(billed, counted);
                    Ok((answer.vectors, counted.unwrap_or(billed.tokens)))
                }
                Err(remote_engine::UpstreamError::Refused(refusal)) => {
                    Err(ApiError::upstream_refused(&refusal))
                }
                Err(remote_engine::UpstreamError::Unavailable(reason)) => {
                    Err(ApiError::no_replica(&prepared.model_id, &reason))
                }
            }
        }
    };
    let (vectors, prompt_tokens) = match outcome {
        Ok(done) => done,
        Err(error) => {
            account.on_not_served();
            account.settle(RecordStatus::Failed).await;
            return Err(error);
        }
    };
    account.settle(RecordStatus::Completed).await;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = match prepared.format {
                EncodingFormat::Float => json!(vector),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let mut response = Json(json!({
        "object": "list",
        "data": data,
        "model": prepared.model_id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
    .into_response();
    response.extensions_mut().insert(AccessLogWritten);
    Ok(response)
}

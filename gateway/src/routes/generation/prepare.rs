//! Validating a generation request: everything it needs before admission can weigh it (the
//! body's shape, the model, the parameters, each prompt rendered and sized).

use std::sync::Arc;

use engine_api::SamplingParams;
use routing::{ModelRouter, RouteRequest};

use super::choices::Choices;
use crate::error::ApiError;
use crate::extensions::Caller;
use crate::models::ModelState;
use crate::openai::chat::ChatCompletionRequest;
use crate::openai::completions::{CompletionRequest, DEFAULT_MAX_TOKENS};
use crate::openai::json::parse;
use crate::openai::params::CommonParams;
use crate::openai::response::{Endpoint, ResponseMeta};
use crate::openai::tools::ToolSpec;
use crate::routes::pipeline::RequestCost;
use crate::state::AppState;

/// A generation request ready to submit.
pub struct PreparedGeneration {
    /// The model's router.
    pub engine: Arc<ModelRouter>,
    /// The response's id, creation time, model and format.
    pub meta: ResponseMeta,
    /// One per prompt (choice), each with its `max_tokens` set.
    pub requests: Vec<RouteRequest>,
    /// SSE rather than one JSON body.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// The caller's scheduling terms, with the priority class the request asked for.
    pub share: policies::Share,
    /// The functions the model may call, if the request offers any.
    pub tools: Option<Arc<ToolSpec>>,
    /// Log probabilities were asked for.
    pub logprobs: bool,
    /// Choices generated per prompt (`n`, or `best_of`): `requests` holds each prompt's
    /// choices together.
    pub choices: Choices,
    /// Choices returned per prompt (`n`): the most likely of those generated.
    pub returned_per_prompt: usize,
    /// Whose cached prompt blocks the request may reuse: its tenant's sharing group's, or its
    /// own (`None`), narrowed to one `cache_salt` if it names one.
    pub cache_scope: Option<String>,
    /// The LoRA adapter it runs with, if its `model` names one.
    pub adapter: Option<String>,
    /// The configured model that serves it (the adapter's, when `model` names one): what
    /// prices, allowances and the ledger's `model` go by.
    pub served_model: String,
}

impl PreparedGeneration {
    /// Lowers every choice's `max_tokens` so that the request uses at most `tokens` in all,
    /// its prompts billed once (admission cut a request without `max_tokens` to what was left
    /// of its tenant's day; it then ends with `finish_reason: length`).
    pub fn fit_to(&mut self, tokens: u64) {
        let prompts: u64 = self
            .choices
            .one_per_prompt(&self.requests)
            .map(|r| r.prompt.tokens() as u64)
            .sum();
        let choices = self.requests.len().max(1) as u64;
        let each = (tokens.saturating_sub(prompts) / choices).max(1) as usize;
        for request in &mut self.requests {
            request.params.max_tokens = request.params.max_tokens.min(each);
        }
    }
}

/// The endpoint's request body, parsed.
enum GenerationBody {
    Chat(ChatCompletionRequest),
    Completions(CompletionRequest),
}

/// Parses, checks, renders and sizes. The order of the checks decides which error a request
/// with several faults gets: body shape, model, parameters, prompts.
pub fn prepare_generation(
    state: &AppState,
    endpoint: Endpoint,
    caller: &Caller,
    body: &[u8],
    model_state: Option<ModelState>,
) -> Result<(PreparedGeneration, RequestCost), ApiError> {
    let parsed = match endpoint {
        Endpoint::Chat => GenerationBody::Chat(parse(body)?),
        Endpoint::Completions => GenerationBody::Completions(parse(body)?),
    };
    let model = match &parsed {
        GenerationBody::Chat(request) => &request.model,
        GenerationBody::Completions(request) => &request.model,
    };
    // An adapter's name stands for its model, with the adapter over it; another tenant's
    // adapter is answered as a model that does not exist.
    let catalog = state.directory().adapters.clone();
    let adapter = match catalog.resolve(model) {
        Some(a) if a.visible_to(&caller.tenant.id) => Some(a),
        Some(_) => return Err(ApiError::model_not_found(model)),
        None => None,
    };
    let engine = match adapter {
        Some(a) => resolve_model(model_state, caller, &a.model).map_err(|e| {
            if e.status == axum::http::StatusCode::NOT_FOUND {
                ApiError::model_not_found(model)
            } else {
                e
            }
        })?,
        None => resolve_model(model_state, caller, model)?,
    };
    let served_model = adapter
        .map_or(model.as_str(), |a| a.model.as_str())
        .to_string();
    let adapter = adapter.map(|a| a.engine.clone());
    let mut params =
        parse::<CommonParams>(body)?.validate(endpoint, &engine.info().sampling_defaults)?;
    let mut share = caller.tenant.limits.share;
    if let Some(asked) = params.priority {
        if asked > share.priority {
            return Err(ApiError::invalid_param(
                "priority",
                format!(
                    "This API key's priority class is `{}`; a request may lower it, not raise it to `{}`.",
                    share.priority.as_str(),
                    asked.as_str()
                ),
            )
            .with_code("priority_not_allowed"));
        }
        share.priority = asked;
    }
    let limits = &state.limits;
    // Choices generated per prompt: `n`, or `best_of` candidates of which `n` are returned.
    let candidates = match &parsed {
        GenerationBody::Chat(_) => params.n,
        GenerationBody::Completions(request) => request.candidates(params.n, params.stream)?,
    };
    let logprobs_asked = params.sampling.logprobs.is_some();
    if candidates > params.n {
        // Candidates are ranked by their total log probability.
        params.sampling.logprobs.get_or_insert(0);
    }
    let tools = match &parsed {
        GenerationBody::Chat(request) => request.tools()?.map(Arc::new),
        GenerationBody::Completions(_) => None,
    };
    // A forced call is the whole answer, held to the function's schema.
    if let Some(constraint) = tools.as_ref().and_then(|t| t.constraint()) {
        if params.sampling.constraint.is_some() {
            return Err(ApiError::invalid_param(
                "response_format",
                "`response_format` cannot be combined with a `tool_choice` that forces a call.",
            ));
        }
        params.sampling.constraint = Some(Arc::new(constraint));
    }
    let prompts = match &parsed {
        GenerationBody::Chat(request) => {
            vec![request.conversation(tools.as_deref())?]
        }
        GenerationBody::Completions(request) => {
            // Counted before anything is built for them: a request of 100,000 one-token
            // prompts must cost nothing but this check.
            let count = request.prompt_count();
            if count.saturating_mul(candidates) > limits.max_prompts_per_request {
                return Err(ApiError::invalid_param(
                    "prompt",
                    format!(
                        "This request has {count} prompts of {candidates} choices each; at most {} choices are allowed per request.",
                        limits.max_prompts_per_request
                    ),
                ));
            }
            request.prompts()?
        }
    };
    let context = engine.info().context_length;
    // The endpoint's `max_tokens` for a prompt of this size when the request names none: chat
    // takes as many as the context has room for (OpenAI's default), completions 16.
    let default_max_tokens = |prompt_tokens: usize| match endpoint {
        Endpoint::Chat => context.saturating_sub(prompt_tokens).max(1),
        Endpoint::Completions => DEFAULT_MAX_TOKENS,
    };
    // Each prompt is rendered and tokenised once, here: admission needs its size, and a local
    // engine gets the ids (a remote one the original, with an estimated size).
    let tier = caller.tenant.tier.as_deref();
    let mut requests = Vec::with_capacity(prompts.len() * candidates);
    for prompt in prompts {
        let prompt = engine.prepare(tier, prompt)?;
        let max_tokens = params
            .max_tokens
            .unwrap_or_else(|| default_max_tokens(prompt.tokens()));
        // `n` choices of one prompt sit next to each other (OpenAI's order of indices); a
        // seeded request seeds its choices apart, so they differ unless sampling is greedy.
        for choice in 0..candidates as u64 {
            requests.push(RouteRequest {
                adapter: adapter.clone(),
                prompt: prompt.clone(),
                params: SamplingParams {
                    max_tokens,
                    seed: params.sampling.seed.map(|s| s.wrapping_add(choice)),
                    ..params.sampling.clone()
                },
            });
        }
    }
    // A prompt counts once however many choices it has (as OpenAI bills `n`): the choices
    // share its computation.
    let choices = Choices::new(candidates);
    let prompt_tokens = choices
        .one_per_prompt(&requests)
        .fold(0u64, |sum, r| sum.saturating_add(r.prompt.tokens() as u64));
    if prompt_tokens > limits.max_prompt_tokens_per_request {
        let param = match endpoint {
            Endpoint::Chat => "messages",
            Endpoint::Completions => "prompt",
        };
        return Err(ApiError::invalid_param(
            param,
            format!(
                "This request has {prompt_tokens} prompt tokens; at most {} are allowed per request.",
                limits.max_prompt_tokens_per_request
            ),
        ));
    }
    let cost = RequestCost {
        prompt_tokens,
        reserved_tokens: RouteRequest::reserved_tokens_of(&requests),
        // Without `max_tokens`, the request may be cut to what is left of the tenant's day
        // (as long as every choice gets a token) rather than refused.
        shortenable_to: params
            .max_tokens
            .is_none()
            .then(|| prompt_tokens.saturating_add(requests.len() as u64)),
    };
    let prepared = PreparedGeneration {
        adapter: adapter.map(|a| a.id),
        served_model,
        meta: ResponseMeta::new(endpoint, model),
        engine,
        requests,
        stream: params.stream,
        include_usage: params.include_usage,
        share,
        // `none` offers nothing: the answer is text, whatever it says.
        tools: tools.filter(|t| t.offered()),
        logprobs: logprobs_asked,
        choices,
        returned_per_prompt: params.n,
        cache_scope: cache_scope(caller, params.cache_salt.as_deref()),
    };
    Ok((prepared, cost))
}

/// The prefix-cache scope of a request of `caller` with `salt`: the tenant's sharing group
/// (configured by the operator) or the tenant itself, narrowed by the salt. The parts are
/// spelled apart (`group`, `tenant`, `salt`), so no name can pose as another kind; `None` is
/// the engine's default, the tenant alone.
fn cache_scope(caller: &Caller, salt: Option<&str>) -> Option<String> {
    let tenant = &caller.tenant;
    let base = match &tenant.prefix_cache_group {
        Some(group) => format!("group\0{group}"),
        None if salt.is_none() => return None,
        None => format!("tenant\0{}", tenant.id.as_str()),
    };
    Some(match salt {
        Some(salt) => format!("{base}\0salt\0{salt}"),
        None => base,
    })
}

/// The router of `model` (whose registry entry is `model_state`), if it exists, the caller may
/// use it, and it is loaded.
fn resolve_model(
    model_state: Option<ModelState>,
    caller: &Caller,
    model: &str,
) -> Result<Arc<ModelRouter>, ApiError> {
    // A model outside the tenant's allow-list is answered as one that does not exist.
    let model_state = model_state
        .filter(|_| caller.may_use(model))
        .ok_or_else(|| ApiError::model_not_found(model))?;
    match model_state {
        ModelState::Ready(engine) => Ok(engine),
        ModelState::Embeddings(_) => Err(ApiError::invalid_param(
            "model",
            format!("`{model}` is an embedding model; use /v1/embeddings."),
        )
        .with_code("model_not_supported")),
        ModelState::Loading => Err(ApiError::model_not_ready(model)),
        ModelState::Failed(reason) => Err(ApiError::server_fault(
            format!("The model `{model}` failed to load."),
            reason,
        )),
    }
}

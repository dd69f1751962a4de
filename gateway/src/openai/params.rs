//! Sampling parameters shared by chat and text completions, validated into engine terms.

use std::sync::Arc;

use engine_api::MAX_TOP_LOGPROBS;
use engine_api::{OutputConstraint, SamplingDefaults, SamplingParams};
use policies::Priority;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::openai::response::Endpoint;

/// OpenAI's `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Stop {
    /// One stop sequence.
    One(String),
    /// Up to four.
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
/// OpenAI's `stream_options`.
pub struct StreamOptions {
    /// A last chunk with the request's `usage` before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// Parameters common to both endpoints. Unknown fields are ignored, as vLLM does.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct CommonParams {
    /// 0 to 2; 0 is greedy.
    pub temperature: Option<f64>,
    /// Nucleus sampling, in (0, 1].
    pub top_p: Option<f64>,
    /// vLLM's extension; -1 or 0 disables it.
    pub top_k: Option<i64>,
    /// Makes sampling reproducible.
    pub seed: Option<i64>,
    /// Most tokens to generate per choice.
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    /// Sequences that end the generation (not included in the text).
    pub stop: Option<Stop>,
    /// -2 to 2.
    pub presence_penalty: Option<f64>,
    /// -2 to 2.
    pub frequency_penalty: Option<f64>,
    /// vLLM's extension: above 0 and at most 2; above 1 discourages every token already in the
    /// prompt or the output (1 disables it).
    pub repetition_penalty: Option<f64>,
    /// vLLM's extension for benchmarks.
    pub ignore_eos: Option<bool>,
    /// Choices per prompt (each sampled on its own; `seed + i` for choice `i`).
    pub n: Option<i64>,
    /// Server-sent events, one chunk per token, ending with `data: [DONE]`.
    pub stream: Option<bool>,
    /// With `stream`.
    pub stream_options: Option<StreamOptions>,
    /// Chat: `true` for each token's log probability. Completions: how many alternatives
    /// (0 to 20) to report with each token's.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
    /// Chat, with `logprobs`: alternatives to report per token, 0 to 20.
    pub top_logprobs: Option<i64>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", "json_schema":
    /// {"name", "schema", "strict"}}`: the output is constrained while it is generated.
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    /// The end user's id (recorded nowhere; accepted for compatibility).
    pub user: Option<String>,
    /// This request's priority class, `interactive` or `batch`: a request may lower its API
    /// key's class (a bulk job from an interactive tenant), never raise it.
    #[schema(value_type = Option<String>)]
    pub priority: Option<serde_json::Value>,
    /// vLLM's prefix-cache salt: only requests with the same salt (of the same tenant or
    /// sharing group) reuse each other's cached prompt blocks.
    pub cache_salt: Option<String>,
}

/// Validated parameters. `max_tokens` stays optional: its default depends on the endpoint and,
/// for chat, on the prompt's length.
#[derive(Debug, Clone)]
pub struct ValidParams {
    /// The engine's sampling parameters (`max_tokens` not yet set).
    pub sampling: SamplingParams,
    /// The request's `max_tokens`, if it named one.
    pub max_tokens: Option<usize>,
    /// Answer with SSE.
    pub stream: bool,
    /// Add a usage chunk before `[DONE]`.
    pub include_usage: bool,
    /// The class the request asked for, if any (checked against the caller's by the preamble).
    pub priority: Option<Priority>,
    /// Choices per prompt.
    pub n: usize,
    /// `cache_salt`, if given (non-empty).
    pub cache_salt: Option<String>,
}

/// Most choices per prompt (`n`): each is a sequence in the engine's batch.
pub const MAX_CHOICES: usize = 16;

/// OpenAI's limit on the number of stop sequences.
const MAX_STOP_SEQUENCES: usize = 4;

fn in_range(
    param: &str,
    value: Option<f64>,
    lo: f64,
    hi: f64,
    default: f64,
) -> Result<f64, ApiError> {
    match value {
        None => Ok(default),
        Some(v) if v.is_finite() && (lo..=hi).contains(&v) => Ok(v),
        Some(v) => Err(ApiError::invalid_param(
            param,
            format!("`{param}` must be between {lo} and {hi}, got {v}."),
        )),
    }
}

impl CommonParams {
    /// Checks every parameter's range for `endpoint`; the first at fault names itself in
    /// `param`. A sampling setting the request leaves out takes the model's default
    /// (`defaults`: `[models.defaults]`, then the file's recommendation), else OpenAI's.
    pub fn validate(
        &self,
        endpoint: Endpoint,
        defaults: &SamplingDefaults,
    ) -> Result<ValidParams, ApiError> {
        let temperature = in_range(
            "temperature",
            self.temperature.or(defaults.temperature),
            0.0,
            2.0,
            1.0,
        )?;
        let top_p = in_range("top_p", self.top_p.or(defaults.top_p), 0.0, 1.0, 1.0)?;
        if top_p == 0.0 {
            return Err(ApiError::invalid_param(
                "top_p",
                "`top_p` must be greater than 0.",
            ));
        }
        let presence_penalty = in_range(
            "presence_penalty",
            self.presence_penalty
                .or(defaults.presence_penalty.map(f64::from)),
            -2.0,
            2.0,
            0.0,
        )?;
        let frequency_penalty = in_range(
            "frequency_penalty",
            self.frequency_penalty
                .or(defaults.frequency_penalty.map(f64::from)),
            -2.0,
            2.0,
            0.0,
        )?;
        let repetition_penalty = in_range(
            "repetition_penalty",
            self.repetition_penalty
                .or(defaults.repetition_penalty.map(f64::from)),
            0.0,
            2.0,
            1.0,
        )?;
        if repetition_penalty == 0.0 {
            return Err(ApiError::invalid_param(
                "repetition_penalty",
                "`repetition_penalty` must be greater than 0.",
            ));
        }
        let top_k = match self.top_k.or(defaults.top_k.map(|k| k as i64)) {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => {
                return Err(ApiError::invalid_param(
                    "top_k",
                    format!("`top_k` must be -1 (disabled) or positive, got {k}."),
                ))
            }
        };
        // `max_completion_tokens` is the newer name; it wins when both are given.
        let (max_param, max_value) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => ("max_completion_tokens", Some(v)),
            (None, v) => ("max_tokens", v),
        };
        let max_tokens = match max_value {
            None => None,
            Some(v) if v >= 1 => Some(v as usize),
            Some(v) => {
                return Err(ApiError::invalid_param(
                    max_param,
                    format!("`{max_param}` must be at least 1, got {v}."),
                ))
            }
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP_SEQUENCES {
            return Err(ApiError::invalid_param(
                "stop",
                format!("At most {MAX_STOP_SEQUENCES} stop sequences are allowed."),
            ));
        }
        let n = match self.n {
            None => 1,
            Some(n) if (1..=MAX_CHOICES as i64).contains(&n) => n as usize,
            Some(n) => {
                return Err(ApiError::invalid_param(
                    "n",
                    format!("`n` must be between 1 and {MAX_CHOICES}, got {n}."),
                ))
            }
        };
        let logprobs = self.logprobs(endpoint)?;
        let constraint = response_format(self.response_format.as_ref())?;
        let priority = match &self.priority {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(name)) if name == Priority::Interactive.as_str() => {
                Some(Priority::Interactive)
            }
            Some(serde_json::Value::String(name)) if name == Priority::Batch.as_str() => {
                Some(Priority::Batch)
            }
            Some(other) => {
                return Err(ApiError::invalid_param(
                    "priority",
                    format!("`priority` must be \"interactive\" or \"batch\", got {other}."),
                ))
            }
        };
        if self.cache_salt.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(ApiError::invalid_param(
                "cache_salt",
                "`cache_salt` must not be empty.",
            ));
        }
        let stream = self.stream.unwrap_or(false);
        Ok(ValidParams {
            cache_salt: self.cache_salt.clone(),
            priority,
            sampling: SamplingParams {
                temperature,
                top_p,
                top_k,
                seed: self.seed.map(|s| s as u64),
                max_tokens: max_tokens.unwrap_or(0),
                stop,
                presence_penalty: presence_penalty as f32,
                frequency_penalty: frequency_penalty as f32,
                repetition_penalty: repetition_penalty as f32,
                ignore_eos: self.ignore_eos.unwrap_or(false),
                logprobs,
                constraint,
            },
            n,
            max_tokens,
            stream,
            include_usage: stream
                && self
                    .stream_options
                    .as_ref()
                    .is_some_and(|o| o.include_usage),
        })
    }
}

impl CommonParams {
    /// How many alternatives to report per token, if log probabilities are asked for: chat
    /// says `logprobs: true` and `top_logprobs: k`, completions `logprobs: k`.
    fn logprobs(&self, endpoint: Endpoint) -> Result<Option<usize>, ApiError> {
        let top = |param: &str, k: i64| match usize::try_from(k) {
            Ok(k) if k <= MAX_TOP_LOGPROBS => Ok(k),
            _ => Err(ApiError::invalid_param(
                param,
                format!("`{param}` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}."),
            )),
        };
        match endpoint {
            Endpoint::Chat => {
                let wanted = match &self.logprobs {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        return Err(ApiError::invalid_param(
                            "logprobs",
                            format!("`logprobs` must be a boolean, got {other}."),
                        ))
                    }
                };
                match (wanted, self.top_logprobs) {
                    (false, Some(k)) if k > 0 => Err(ApiError::invalid_param(
                        "top_logprobs",
                        "`top_logprobs` needs `logprobs: true`.",
                    )),
                    (false, _) => Ok(None),
                    (true, k) => top("top_logprobs", k.unwrap_or(0)).map(Some),
                }
            }
            Endpoint::Completions => match &self.logprobs {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(k)) if k.as_i64().is_some() => {
                    top("logprobs", k.as_i64().unwrap_or(0)).map(Some)
                }
                Some(other) => Err(ApiError::invalid_param(
                    "logprobs",
                    format!(
                        "`logprobs` must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {other}."
                    ),
                )),
            },
        }
    }
}

/// OpenAI's `response_format` as an output constraint, checked with the grammar engine (a
/// schema it cannot use is the request's fault, named in the message).
fn response_format(format: Option<&Value>) -> Result<Option<Arc<OutputConstraint>>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let invalid = |message: String| ApiError::invalid_param("response_format", message);
    let constraint = match format.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(None),
        Some("json_object") => OutputConstraint::JsonObject,
        Some("json_schema") => {
            let schema = format
                .pointer("/json_schema/schema")
                .filter(|s| s.is_object() || s.is_boolean())
                .ok_or_else(|| {
                    invalid(
                        "`response_format.json_schema.schema` must be a JSON Schema object.".into(),
                    )
                })?;
            OutputConstraint::JsonSchema(schema.clone())
        }
        other => {
            return Err(invalid(format!(
                "`response_format.type` must be `text`, `json_object` or `json_schema`, got {}.",
                other.map_or("nothing".to_string(), |t| format!("`{t}`"))
            )))
        }
    };
    structured_output::check(&constraint)
        .map_err(|e| invalid(format!("The schema cannot be used: {e}.")))?;
    Ok(Some(Arc::new(constraint)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ValidParams, ApiError> {
        parse_for(Endpoint::Chat, json)
    }

    fn parse_for(endpoint: Endpoint, json: &str) -> Result<ValidParams, ApiError> {
        serde_json::from_str::<CommonParams>(json)
            .unwrap()
            .validate(endpoint, &SamplingDefaults::default())
    }

    #[test]
    fn logprobs_in_each_endpoints_terms() {
        let chat = |json| parse_for(Endpoint::Chat, json);
        let text = |json| parse_for(Endpoint::Completions, json);
        assert_eq!(
            chat(r#"{"logprobs": true}"#).unwrap().sampling.logprobs,
            Some(0)
        );
        assert_eq!(
            chat(r#"{"logprobs": true, "top_logprobs": 20}"#)
                .unwrap()
                .sampling
                .logprobs,
            Some(20)
        );
        assert_eq!(
            chat(r#"{"logprobs": false}"#).unwrap().sampling.logprobs,
            None
        );
        assert_eq!(
            text(r#"{"logprobs": 3}"#).unwrap().sampling.logprobs,
            Some(3)
        );
        assert_eq!(
            text(r#"{"logprobs": null}"#).unwrap().sampling.logprobs,
            None
        );
        for (endpoint, json, param) in [
            (
                Endpoint::Chat,
                r#"{"logprobs": true, "top_logprobs": 21}"#,
                "top_logprobs",
            ),
            (Endpoint::Chat, r#"{"top_logprobs": 2}"#, "top_logprobs"),
            (Endpoint::Chat, r#"{"logprobs": 2}"#, "logprobs"),
            (Endpoint::Completions, r#"{"logprobs": 21}"#, "logprobs"),
            (Endpoint::Completions, r#"{"logprobs": true}"#, "logprobs"),
        ] {
            let err = parse_for(endpoint, json).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{json}");
        }
    }

    #[test]
    fn response_formats_become_constraints_and_bad_schemas_are_400s() {
        assert!(parse(r#"{"response_format": {"type": "text"}}"#)
            .unwrap()
            .sampling
            .constraint
            .is_none());
        assert_eq!(
            parse(r#"{"response_format": {"type": "json_object"}}"#)
                .unwrap()
                .sampling
                .constraint
                .as_deref(),
            Some(&OutputConstraint::JsonObject)
        );
        let schema = r#"{"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}}"#;
        assert!(matches!(
            parse(schema).unwrap().sampling.constraint.as_deref(),
            Some(OutputConstraint::JsonSchema(_))
        ));
        for json in [
            r#"{"response_format": {"type": "yaml"}}"#,
            r#"{"response_format": {"type": "json_schema"}}"#,
            r#"{"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integr"}}}}}}"#,
            r##"{"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/nowhere"}}}}"##,
        ] {
            let err = parse(json).unwrap_err();
            assert_eq!(err.param.as_deref(), Some("response_format"), "{json}");
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn defaults_are_openais() {
        let p = parse("{}").unwrap();
        assert_eq!(p.sampling.temperature, 1.0);
        assert_eq!(p.sampling.top_p, 1.0);
        assert_eq!(p.sampling.repetition_penalty, 1.0);
        assert_eq!(p.max_tokens, None);
        assert!(!p.stream);
    }

    /// The request first, then the model's defaults, then OpenAI's (issue 30, item 10).
    #[test]
    fn a_models_defaults_fill_what_the_request_leaves_out() {
        let defaults = SamplingDefaults {
            temperature: Some(0.2),
            top_p: Some(0.9),
            top_k: Some(40),
            repetition_penalty: Some(1.1),
            ..SamplingDefaults::default()
        };
        let validate = |json: &str| {
            serde_json::from_str::<CommonParams>(json)
                .unwrap()
                .validate(Endpoint::Chat, &defaults)
                .unwrap()
                .sampling
        };
        let omitted = validate("{}");
        assert_eq!(omitted.temperature, 0.2);
        assert_eq!(omitted.top_p, 0.9);
        assert_eq!(omitted.top_k, 40);
        assert!((omitted.repetition_penalty - 1.1).abs() < 1e-6);
        assert_eq!(omitted.presence_penalty, 0.0, "no default: OpenAI's");
        let asked = validate(
            r#"{"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0}"#,
        );
        assert_eq!(asked.temperature, 1.0);
        assert_eq!(asked.top_p, 1.0);
        assert_eq!(asked.top_k, 0);
        assert_eq!(asked.repetition_penalty, 1.0);
    }

    #[test]
    fn out_of_range_values_name_their_param() {
        for (json, param) in [
            (r#"{"temperature": 2.5}"#, "temperature"),
            (r#"{"temperature": -0.1}"#, "temperature"),
            (r#"{"top_p": 0}"#, "top_p"),
            (r#"{"top_p": 1.5}"#, "top_p"),
            (r#"{"top_k": -2}"#, "top_k"),
            (r#"{"max_tokens": 0}"#, "max_tokens"),
            (r#"{"max_completion_tokens": -5}"#, "max_completion_tokens"),
            (r#"{"presence_penalty": 3}"#, "presence_penalty"),
            (r#"{"frequency_penalty": -3}"#, "frequency_penalty"),
            (r#"{"repetition_penalty": 0}"#, "repetition_penalty"),
            (r#"{"repetition_penalty": 2.5}"#, "repetition_penalty"),
            (r#"{"n": 0}"#, "n"),
            (r#"{"n": 17}"#, "n"),
            (r#"{"stop": ["a","b","c","d","e"]}"#, "stop"),
            (r#"{"priority": "urgent"}"#, "priority"),
            (r#"{"priority": 1}"#, "priority"),
        ] {
            let err = parse(json).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{json}");
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn max_completion_tokens_wins_and_usage_needs_streaming() {
        let p = parse(r#"{"max_tokens": 5, "max_completion_tokens": 7, "stream_options": {"include_usage": true}}"#).unwrap();
        assert_eq!(p.max_tokens, Some(7));
        assert!(!p.include_usage);
        let p = parse(r#"{"stream": true, "stream_options": {"include_usage": true}, "stop": "x", "seed": -1}"#).unwrap();
        assert!(p.include_usage);
        assert_eq!(p.sampling.stop, vec!["x".to_string()]);
        assert_eq!(p.sampling.seed, Some(u64::MAX));
    }

    #[test]
    fn priority_names_a_class() {
        assert_eq!(parse("{}").unwrap().priority, None);
        assert_eq!(
            parse(r#"{"priority": "batch"}"#).unwrap().priority,
            Some(Priority::Batch)
        );
        assert_eq!(
            parse(r#"{"priority": "interactive"}"#).unwrap().priority,
            Some(Priority::Interactive)
        );
    }
}

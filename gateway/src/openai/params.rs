//! Sampling parameters shared by chat and text completions, validated into engine terms.

use engines::SamplingParams;
use policies::Priority;
use serde::Deserialize;

use crate::error::ApiError;

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
    /// vLLM's extension for benchmarks.
    pub ignore_eos: Option<bool>,
    /// Choices per prompt: 1 only, so far.
    pub n: Option<i64>,
    /// Server-sent events, one chunk per token, ending with `data: [DONE]`.
    pub stream: Option<bool>,
    /// With `stream`.
    pub stream_options: Option<StreamOptions>,
    /// Not supported yet.
    pub logprobs: Option<serde_json::Value>,
    /// Not supported yet.
    pub top_logprobs: Option<serde_json::Value>,
    /// The end user's id (recorded nowhere; accepted for compatibility).
    pub user: Option<String>,
    /// This request's priority class, `interactive` or `batch`: a request may lower its API
    /// key's class (a bulk job from an interactive tenant), never raise it.
    #[schema(value_type = Option<String>)]
    pub priority: Option<serde_json::Value>,
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
}

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
    /// Checks every parameter's range; the first at fault names itself in `param`.
    pub fn validate(&self) -> Result<ValidParams, ApiError> {
        let temperature = in_range("temperature", self.temperature, 0.0, 2.0, 1.0)?;
        let top_p = in_range("top_p", self.top_p, 0.0, 1.0, 1.0)?;
        if top_p == 0.0 {
            return Err(ApiError::invalid_param(
                "top_p",
                "`top_p` must be greater than 0.",
            ));
        }
        let presence_penalty = in_range("presence_penalty", self.presence_penalty, -2.0, 2.0, 0.0)?;
        let frequency_penalty =
            in_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0, 0.0)?;
        let top_k = match self.top_k {
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
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid_param(
                    "n",
                    "Only `n = 1` is supported; send several requests for several choices.",
                ));
            }
        }
        if logprobs_requested(&self.logprobs) || logprobs_requested(&self.top_logprobs) {
            return Err(ApiError::invalid_param(
                "logprobs",
                "`logprobs` is not supported yet.",
            ));
        }
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
        let stream = self.stream.unwrap_or(false);
        Ok(ValidParams {
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
                ignore_eos: self.ignore_eos.unwrap_or(false),
            },
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

/// `logprobs: false`, `null` or `0` ask for nothing.
fn logprobs_requested(value: &Option<serde_json::Value>) -> bool {
    match value {
        None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => false,
        Some(serde_json::Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ValidParams, ApiError> {
        serde_json::from_str::<CommonParams>(json)
            .unwrap()
            .validate()
    }

    #[test]
    fn defaults_are_openais() {
        let p = parse("{}").unwrap();
        assert_eq!(p.sampling.temperature, 1.0);
        assert_eq!(p.sampling.top_p, 1.0);
        assert_eq!(p.max_tokens, None);
        assert!(!p.stream);
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
            (r#"{"n": 2}"#, "n"),
            (r#"{"stop": ["a","b","c","d","e"]}"#, "stop"),
            (r#"{"logprobs": true}"#, "logprobs"),
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

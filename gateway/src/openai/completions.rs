//! `POST /v1/completions` request body.

use engine_api::Prompt;
use serde::Deserialize;

use crate::error::ApiError;
use crate::openai::params::MAX_CHOICES;

/// The completions endpoint's own fields (the sampling parameters are
/// [`crate::openai::params::CommonParams`]).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    /// The model's id (`GET /v1/models`).
    pub model: String,
    /// One prompt or several (one choice each), as text or token ids.
    pub prompt: PromptInput,
    /// Not supported yet (400 when true).
    pub echo: Option<bool>,
    /// Not supported yet (400 when set).
    pub suffix: Option<String>,
    /// Candidates generated per prompt, of which the `n` most likely (highest total log
    /// probability) are returned; `n` to 16, not with `stream`.
    pub best_of: Option<i64>,
}

/// OpenAI's four prompt shapes.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum PromptInput {
    /// One text prompt.
    Text(String),
    /// Several text prompts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<u32>>),
}

/// OpenAI's default for the completions endpoint.
pub const DEFAULT_MAX_TOKENS: usize = 16;

impl CompletionRequest {
    /// How many prompts (choices) the request carries, before any is built.
    pub fn prompt_count(&self) -> usize {
        match &self.prompt {
            PromptInput::Text(_) | PromptInput::Tokens(_) => 1,
            PromptInput::Texts(texts) => texts.len(),
            PromptInput::TokenLists(lists) => lists.len(),
        }
    }

    /// Candidates per prompt: `best_of`, at least `n` (the default) and at most
    /// [`MAX_CHOICES`]; more than `n` cannot stream (the best are known at the end).
    pub fn candidates(&self, n: usize, stream: bool) -> Result<usize, ApiError> {
        let Some(best_of) = self.best_of else {
            return Ok(n);
        };
        if best_of < n as i64 || best_of > MAX_CHOICES as i64 {
            return Err(ApiError::invalid_param(
                "best_of",
                format!("`best_of` must be between `n` ({n}) and {MAX_CHOICES}, got {best_of}."),
            ));
        }
        if stream && best_of > n as i64 {
            return Err(ApiError::invalid_param(
                "best_of",
                "`best_of` above `n` cannot be streamed: the best choices are known at the end.",
            ));
        }
        Ok(best_of as usize)
    }

    /// The prompts, one choice each.
    pub fn prompts(&self) -> Result<Vec<Prompt>, ApiError> {
        if self.echo == Some(true) {
            return Err(ApiError::invalid_param(
                "echo",
                "`echo` is not supported yet.",
            ));
        }
        if self.suffix.is_some() {
            return Err(ApiError::invalid_param(
                "suffix",
                "`suffix` is not supported.",
            ));
        }
        let prompts: Vec<Prompt> = match &self.prompt {
            PromptInput::Text(t) => vec![Prompt::Text(t.clone())],
            PromptInput::Texts(ts) => ts.iter().cloned().map(Prompt::Text).collect(),
            PromptInput::Tokens(ids) => vec![Prompt::Tokens(ids.clone())],
            PromptInput::TokenLists(lists) => lists.iter().cloned().map(Prompt::Tokens).collect(),
        };
        if prompts.is_empty() {
            return Err(ApiError::invalid_param(
                "prompt",
                "`prompt` must not be empty.",
            ));
        }
        Ok(prompts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompts(json: &str) -> Result<Vec<Prompt>, ApiError> {
        crate::openai::json::parse::<CompletionRequest>(json.as_bytes())?.prompts()
    }

    #[test]
    fn accepts_the_four_prompt_shapes() {
        assert_eq!(prompts(r#"{"model":"m","prompt":"a"}"#).unwrap().len(), 1);
        assert_eq!(
            prompts(r#"{"model":"m","prompt":["a","b"]}"#)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            prompts(r#"{"model":"m","prompt":[1,2,3]}"#).unwrap().len(),
            1
        );
        assert_eq!(
            prompts(r#"{"model":"m","prompt":[[1],[2]]}"#)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn rejects_empty_and_unsupported() {
        assert_eq!(
            prompts(r#"{"model":"m","prompt":[]}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("prompt")
        );
        assert_eq!(
            prompts(r#"{"model":"m","prompt":"a","echo":true}"#)
                .unwrap_err()
                .param
                .as_deref(),
            Some("echo")
        );
        assert!(prompts(r#"{"model":"m","prompt":{"x":1}}"#).is_err());
    }
}

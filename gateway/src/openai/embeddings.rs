//! `POST /v1/embeddings` request body.

use serde::Deserialize;

use crate::error::ApiError;

/// Most inputs one request may carry (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// The embeddings endpoint's body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingRequest {
    /// The embedding model's id (`GET /v1/models`).
    pub model: String,
    /// One input or several, as text or token ids (ids are used as given: include the model's
    /// special tokens, e.g. `[CLS] ... [SEP]`, to match text input).
    pub input: EmbeddingInput,
    /// `float` (default) or `base64` (the little-endian f32 bytes of each vector).
    pub encoding_format: Option<EncodingFormat>,
    /// Only the model's own size is accepted (vectors are not shortened).
    pub dimensions: Option<u64>,
    /// Accepted and ignored (OpenAI's end-user id).
    pub user: Option<String>,
}

/// OpenAI's four input shapes.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One input as token ids.
    Tokens(Vec<u32>),
    /// Several inputs as token ids.
    TokenLists(Vec<Vec<u32>>),
}

/// How vectors are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    /// JSON numbers.
    #[default]
    Float,
    /// Base64 of the little-endian f32 bytes.
    Base64,
}

/// One input, before tokenisation.
pub enum Input<'a> {
    /// Text, tokenised by the model.
    Text(&'a str),
    /// Token ids, checked by the model.
    Tokens(&'a [u32]),
}

impl EmbeddingRequest {
    /// The inputs, in order: at least one, at most [`MAX_INPUTS`].
    pub fn inputs(&self) -> Result<Vec<Input<'_>>, ApiError> {
        let inputs: Vec<Input<'_>> = match &self.input {
            EmbeddingInput::Text(t) => vec![Input::Text(t)],
            EmbeddingInput::Texts(ts) => ts.iter().map(|t| Input::Text(t)).collect(),
            EmbeddingInput::Tokens(ids) => vec![Input::Tokens(ids)],
            EmbeddingInput::TokenLists(lists) => lists.iter().map(|l| Input::Tokens(l)).collect(),
        };
        if inputs.is_empty() {
            return Err(ApiError::invalid_param(
                "input",
                "`input` must not be empty.",
            ));
        }
        if inputs.len() > MAX_INPUTS {
            return Err(ApiError::invalid_param(
                "input",
                format!("`input` may hold at most {MAX_INPUTS} items."),
            ));
        }
        Ok(inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<EmbeddingRequest, ApiError> {
        crate::openai::json::parse::<EmbeddingRequest>(json.as_bytes())
    }

    #[test]
    fn accepts_the_four_input_shapes_and_refuses_empty_ones() {
        for (json, n) in [
            (r#"{"model":"m","input":"a"}"#, 1),
            (r#"{"model":"m","input":["a","b"]}"#, 2),
            (r#"{"model":"m","input":[101,102]}"#, 1),
            (r#"{"model":"m","input":[[101],[102],[103]]}"#, 3),
        ] {
            assert_eq!(parse(json).unwrap().inputs().unwrap().len(), n, "{json}");
        }
        let empty = parse(r#"{"model":"m","input":[]}"#).unwrap();
        assert_eq!(
            empty.inputs().err().unwrap().param.as_deref(),
            Some("input")
        );
        assert!(parse(r#"{"model":"m","input":{"x":1}}"#).is_err());
        assert!(parse(r#"{"model":"m","input":"a","encoding_format":"hex"}"#).is_err());
        assert_eq!(
            parse(r#"{"model":"m","input":"a","encoding_format":"base64"}"#)
                .unwrap()
                .encoding_format,
            Some(EncodingFormat::Base64)
        );
    }
}

//! `POST /v1/chat/completions` request body.

use engines::ChatMessage;
use serde::Deserialize;

use crate::error::ApiError;

/// The chat endpoint's own fields (the sampling parameters are [`crate::openai::params::CommonParams`]).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionRequest {
    /// The model's id (`GET /v1/models`).
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<RequestMessage>,
    /// Not supported yet: anything but absent or `[]` is a 400.
    pub tools: Option<serde_json::Value>,
    /// `{"type": "text"}` only, so far.
    pub response_format: Option<serde_json::Value>,
}

/// One message of the conversation.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct RequestMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text, or a list of parts of which only `text` parts are supported.
    #[serde(default)]
    pub content: Option<MessageContent>,
}

/// A message's content: a string, or a list of parts of which only text is supported.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts.
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
/// One part of a message's content.
pub struct ContentPart {
    /// `text` (the only kind supported).
    #[serde(rename = "type")]
    pub kind: String,
    /// The part's text.
    pub text: Option<String>,
}

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

impl ChatCompletionRequest {
    /// Checks the conversation and flattens it to plain-text messages for the chat template.
    pub fn conversation(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must not be empty.",
            ));
        }
        if self
            .tools
            .as_ref()
            .is_some_and(|t| !t.is_null() && t != &serde_json::json!([]))
        {
            return Err(ApiError::invalid_param(
                "tools",
                "Tool calling is not supported yet.",
            ));
        }
        if let Some(format) = &self.response_format {
            let kind = format.get("type").and_then(|t| t.as_str()).unwrap_or("");
            if !format.is_null() && kind != "text" {
                return Err(ApiError::invalid_param(
                    "response_format",
                    "Only `response_format: {\"type\": \"text\"}` is supported yet.",
                ));
            }
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if !ROLES.contains(&m.role.as_str()) {
                    return Err(ApiError::invalid_param(
                        &format!("messages[{i}].role"),
                        format!(
                            "Invalid role `{}`; expected one of {}.",
                            m.role,
                            ROLES.join(", ")
                        ),
                    ));
                }
                let content = match &m.content {
                    Some(MessageContent::Text(text)) => text.clone(),
                    Some(MessageContent::Parts(parts)) => text_of_parts(parts, i)?,
                    // An assistant turn may carry no content (it called a tool).
                    None if m.role == "assistant" => String::new(),
                    None => {
                        return Err(ApiError::invalid_param(
                            &format!("messages[{i}].content"),
                            "A message needs `content`.",
                        ))
                    }
                };
                // `developer` is OpenAI's newer name for the system role.
                let role = if m.role == "developer" {
                    "system"
                } else {
                    &m.role
                };
                Ok(ChatMessage::new(role, content))
            })
            .collect()
    }
}

fn text_of_parts(parts: &[ContentPart], message: usize) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        match (part.kind.as_str(), &part.text) {
            ("text", Some(t)) => text.push_str(t),
            _ => {
                return Err(ApiError::invalid_param(
                    &format!("messages[{message}].content[{j}]"),
                    format!(
                        "Content parts of type `{}` are not supported; only `text`.",
                        part.kind
                    ),
                ))
            }
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> ChatCompletionRequest {
        crate::openai::json::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn flattens_text_parts_and_maps_developer() {
        let r = request(
            r#"{"model":"m","messages":[{"role":"developer","content":"be kind"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        );
        let c = r.conversation().unwrap();
        assert_eq!(c[0], ChatMessage::new("system", "be kind"));
        assert_eq!(c[1], ChatMessage::new("user", "ab"));
    }

    #[test]
    fn rejects_what_it_cannot_serve() {
        for (json, param) in [
            (r#"{"model":"m","messages":[]}"#, "messages"),
            (
                r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "messages[0].content[0]",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#,
                "tools",
            ),
        ] {
            let err = request(json).conversation().unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{json}");
        }
    }
}

//! `POST /v1/chat/completions` request body.

use engines::ChatMessage;
use serde::Deserialize;

use crate::error::ApiError;
use crate::openai::tools::{render_calls, ToolSpec};

/// The chat endpoint's own fields (the sampling parameters are [`crate::openai::params::CommonParams`]).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionRequest {
    /// The model's id (`GET /v1/models`).
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<RequestMessage>,
    /// Functions the model may call (`[{"type": "function", "function": {name, description,
    /// parameters}}]`).
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<serde_json::Value>,
    /// `none`, `auto` (the default with tools), `required`, or `{"type": "function",
    /// "function": {"name": ...}}`.
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<serde_json::Value>,
}

/// One message of the conversation.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct RequestMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text, or a list of parts of which only `text` parts are supported.
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// An assistant message's calls (`[{"id", "type": "function", "function": {"name",
    /// "arguments"}}]`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A `tool` message: the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
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
    /// The request's tools and tool choice, checked; `None` without tools.
    pub fn tools(&self) -> Result<Option<ToolSpec>, ApiError> {
        ToolSpec::from_request(self.tools.as_ref(), self.tool_choice.as_ref())
    }

    /// Checks the conversation and flattens it to plain-text messages for the chat template:
    /// offered tools are described in the system message, earlier calls written as the model
    /// writes them (see [`crate::openai::tools`]).
    pub fn conversation(&self, tools: Option<&ToolSpec>) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must not be empty.",
            ));
        }
        let mut messages = self.flat_messages()?;
        if let Some(tools) = tools.filter(|t| t.offered()) {
            let prompt = tools.system_prompt();
            match messages.first_mut() {
                Some(first) if first.role == "system" => {
                    first.content = format!("{}\n\n{prompt}", first.content);
                }
                _ => messages.insert(0, ChatMessage::new("system", prompt)),
            }
        }
        Ok(messages)
    }

    fn flat_messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
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
                let mut content = match &m.content {
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
                if let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_empty()) {
                    if m.role != "assistant" {
                        return Err(ApiError::invalid_param(
                            &format!("messages[{i}].tool_calls"),
                            "Only assistant messages carry `tool_calls`.",
                        ));
                    }
                    if !content.is_empty() {
                        content.push('\n');
                    }
                    content.push_str(&render_calls(calls));
                }
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

    #[test]
    fn tools_join_the_system_message_and_calls_the_assistant_turns() {
        let r = request(
            r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Weather in Lyon?"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Lyon\"}"}}]},
                {"role":"tool","tool_call_id":"call_1","content":"12 C"}],
               "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]}"#,
        );
        let tools = r.tools().unwrap();
        let c = r.conversation(tools.as_ref()).unwrap();
        assert_eq!(c.len(), 4);
        assert!(c[0].content.starts_with("Be brief.\n\n") && c[0].content.contains("<tools>"));
        assert!(c[0].content.contains("get_weather"));
        assert_eq!(
            c[2].content,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Lyon\"}}\n</tool_call>"
        );
        assert_eq!(c[3], ChatMessage::new("tool", "12 C"));
        // `tool_choice: none`: the functions are not described.
        let mut none = r.clone();
        none.tool_choice = Some(serde_json::json!("none"));
        let c = none.conversation(none.tools().unwrap().as_ref()).unwrap();
        assert_eq!(c[0].content, "Be brief.");
    }

    fn request(json: &str) -> ChatCompletionRequest {
        crate::openai::json::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn flattens_text_parts_and_maps_developer() {
        let r = request(
            r#"{"model":"m","messages":[{"role":"developer","content":"be kind"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        );
        let c = r.conversation(None).unwrap();
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
        ] {
            let err = request(json).conversation(None).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{json}");
        }
    }
}

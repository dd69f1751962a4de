//! `POST /v1/chat/completions` request body.

use std::sync::Arc;

use engine_api::tools::arguments_object;
use engine_api::{ChatMessage, Prompt};
use serde::Deserialize;

use crate::error::ApiError;
use crate::openai::tools::ToolSpec;

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

    /// Checks the conversation and makes it the engine's prompt: text messages (content parts
    /// flattened), earlier calls and tool results kept, and the offered functions (see
    /// [`crate::openai::tools`]).
    pub fn conversation(&self, tools: Option<&ToolSpec>) -> Result<Prompt, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must not be empty.",
            ));
        }
        let messages = self.messages()?;
        Ok(match tools.filter(|t| t.offered()) {
            Some(tools) => Prompt::ChatWithTools(messages, Arc::new(tools.tool_values())),
            None => Prompt::Chat(messages),
        })
    }

    fn messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
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
                let tool_calls = match m.tool_calls.as_ref().filter(|c| !c.is_empty()) {
                    Some(_) if m.role != "assistant" => {
                        return Err(ApiError::invalid_param(
                            &format!("messages[{i}].tool_calls"),
                            "Only assistant messages carry `tool_calls`.",
                        ))
                    }
                    // Templates read each call's arguments as an object.
                    Some(calls) => Some(
                        calls
                            .iter()
                            .map(|call| {
                                let mut call = call.clone();
                                let arguments = arguments_object(&call["function"]["arguments"]);
                                if let Some(function) = call.get_mut("function") {
                                    function["arguments"] = arguments;
                                }
                                call
                            })
                            .collect(),
                    ),
                    None => None,
                };
                // `developer` is OpenAI's newer name for the system role.
                let role = if m.role == "developer" {
                    "system"
                } else {
                    &m.role
                };
                let mut message = ChatMessage::new(role, content);
                message.tool_calls = tool_calls;
                message.tool_call_id = m.tool_call_id.clone();
                Ok(message)
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
    fn tools_and_earlier_calls_reach_the_engine() {
        let r = request(
            r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Weather in Lyon?"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Lyon\"}"}}]},
                {"role":"tool","tool_call_id":"call_1","content":"12 C"}],
               "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]}"#,
        );
        let tools = r.tools().unwrap();
        let Prompt::ChatWithTools(messages, offered) = r.conversation(tools.as_ref()).unwrap()
        else {
            panic!("tools are offered")
        };
        assert_eq!(offered[0]["function"]["name"], "get_weather");
        assert_eq!(messages.len(), 4);
        let call = &messages[2].tool_calls.as_ref().unwrap()[0];
        assert_eq!(
            call["function"]["arguments"]["city"], "Lyon",
            "arguments as an object"
        );
        assert_eq!(messages[3].tool_call_id.as_deref(), Some("call_1"));
        // `tool_choice: none`: the functions are not offered.
        let mut none = r.clone();
        none.tool_choice = Some(serde_json::json!("none"));
        assert!(matches!(
            none.conversation(none.tools().unwrap().as_ref()).unwrap(),
            Prompt::Chat(_)
        ));
    }

    #[test]
    fn flattens_text_parts_and_maps_developer() {
        let r = request(
            r#"{"model":"m","messages":[{"role":"developer","content":"be kind"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        );
        let Prompt::Chat(c) = r.conversation(None).unwrap() else {
            panic!("no tools")
        };
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

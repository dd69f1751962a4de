//! `POST /v1/messages` request body, read and translated into a chat-completions body: the
//! conversation then runs through the chat pipeline (its template, which keeps message content
//! out of special tokens, its tools, its sampling checks) like any other.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// Anthropic's request fields that the gateway serves. Fields that change the answer and that
/// it cannot serve (`thinking`, images, server tools) are refused by name; those about
/// Anthropic's own service (`service_tier`, `cache_control`, `inference_geo`, ...) are ignored,
/// as other open servers do.
#[derive(Debug, Clone, Deserialize)]
pub struct MessagesRequest {
    /// The model's id.
    pub model: String,
    /// The most tokens to generate (required by the Messages API).
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// The conversation: alternating `user` and `assistant` turns.
    pub messages: Vec<InputMessage>,
    /// The system prompt: text, or a list of text blocks.
    #[serde(default)]
    pub system: Option<Value>,
    /// Strings that end the answer.
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Top-k sampling.
    #[serde(default)]
    pub top_k: Option<i64>,
    /// Server-sent events rather than one body.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Tools: `[{"name", "description", "input_schema"}]`.
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// `{"type": "auto" | "any" | "tool" | "none", "name"?}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// `{"user_id"}`: kept as the request's user.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Extended thinking: not served.
    #[serde(default)]
    pub thinking: Option<Value>,
    /// `{"format": {"type": "json_schema", "schema"}}`: the answer held to the schema (through
    /// the gateway's structured output); `effort` is ignored.
    #[serde(default)]
    pub output_config: Option<Value>,
}

/// One turn of the conversation.
#[derive(Debug, Clone, Deserialize)]
pub struct InputMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// Text, or content blocks (`text`, `tool_use`, `tool_result`).
    pub content: Value,
}

impl MessagesRequest {
    /// The same request as a chat-completions body. `for_counting`: `count_tokens` takes no
    /// `max_tokens`.
    pub fn to_chat(&self, for_counting: bool) -> Result<Value, ApiError> {
        if self
            .thinking
            .as_ref()
            .is_some_and(|t| t["type"] != "disabled")
        {
            return Err(ApiError::invalid_param(
                "thinking",
                "Extended thinking is not supported by this gateway.",
            ));
        }
        let mut chat = Map::new();
        chat.insert("model".into(), json!(self.model));
        match self.max_tokens {
            Some(n) if n >= 1 => {
                chat.insert("max_tokens".into(), json!(n));
            }
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "max_tokens",
                    "`max_tokens` must be at least 1.",
                ))
            }
            None if for_counting => {}
            None => {
                return Err(ApiError::invalid_param(
                    "max_tokens",
                    "`max_tokens` is required.",
                ))
            }
        }
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            messages.push(json!({"role": "system", "content": system_text(system)?}));
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must not be empty.",
            ));
        }
        for (i, message) in self.messages.iter().enumerate() {
            translate_message(i, message, &mut messages)?;
        }
        chat.insert("messages".into(), Value::Array(messages));
        if self.stream == Some(true) && !for_counting {
            chat.insert("stream".into(), json!(true));
        }
        for (name, value) in [
            ("temperature", self.temperature.map(|v| json!(v))),
            ("top_p", self.top_p.map(|v| json!(v))),
            ("top_k", self.top_k.map(|v| json!(v))),
        ] {
            if let Some(value) = value {
                chat.insert(name.into(), value);
            }
        }
        if let Some(stops) = self.stop_sequences.as_ref().filter(|s| !s.is_empty()) {
            chat.insert("stop".into(), json!(stops));
        }
        if let Some(user) = self
            .metadata
            .as_ref()
            .and_then(|m| m.get("user_id"))
            .and_then(Value::as_str)
        {
            chat.insert("user".into(), json!(user));
        }
        if let Some(tools) = self.tools.as_ref().filter(|t| !t.is_empty()) {
            chat.insert("tools".into(), Value::Array(translate_tools(tools)?));
        }
        if let Some(choice) = &self.tool_choice {
            chat.insert("tool_choice".into(), translate_tool_choice(choice)?);
        }
        if let Some(format) = self
            .output_config
            .as_ref()
            .and_then(|c| c.get("format"))
            .filter(|f| !f.is_null())
        {
            let schema = match (format["type"].as_str(), format.get("schema")) {
                (Some("json_schema"), Some(schema)) if schema.is_object() => schema,
                _ => {
                    return Err(ApiError::invalid_param(
                        "output_config.format",
                        "`output_config.format` must be {\"type\": \"json_schema\", \"schema\": {...}}.",
                    ))
                }
            };
            chat.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": true}}),
            );
        }
        Ok(Value::Object(chat))
    }

    /// Whether the answer is to be streamed.
    pub fn streamed(&self) -> bool {
        self.stream == Some(true)
    }
}

/// `system`: a string, or text blocks joined.
fn system_text(system: &Value) -> Result<String, ApiError> {
    match system {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => blocks
            .iter()
            .enumerate()
            .map(
                |(j, block)| match (block["type"].as_str(), block["text"].as_str()) {
                    (Some("text"), Some(text)) => Ok(text.to_string()),
                    _ => Err(ApiError::invalid_param(
                        &format!("system[{j}]"),
                        "System blocks must be `{\"type\": \"text\", \"text\": ...}`.",
                    )),
                },
            )
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.join("\n")),
        _ => Err(ApiError::invalid_param(
            "system",
            "`system` must be a string or a list of text blocks.",
        )),
    }
}

/// One Anthropic turn as chat messages: its text (and, for an assistant, its calls); a user
/// turn's `tool_result` blocks become `tool` messages, ahead of its text.
fn translate_message(
    i: usize,
    message: &InputMessage,
    out: &mut Vec<Value>,
) -> Result<(), ApiError> {
    let role = message.role.as_str();
    if role != "user" && role != "assistant" {
        return Err(ApiError::invalid_param(
            &format!("messages[{i}].role"),
            format!("Invalid role `{role}`; expected `user` or `assistant`."),
        ));
    }
    let blocks = match &message.content {
        Value::String(text) => {
            out.push(json!({"role": role, "content": text}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(ApiError::invalid_param(
                &format!("messages[{i}].content"),
                "`content` must be a string or a list of content blocks.",
            ))
        }
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("messages[{i}].content[{j}]");
        match (role, block["type"].as_str().unwrap_or_default()) {
            (_, "text") => match block["text"].as_str() {
                Some(t) => text.push_str(t),
                None => return Err(ApiError::invalid_param(&at, "A text block needs `text`.")),
            },
            ("assistant", "tool_use") => {
                let (Some(id), Some(name)) = (block["id"].as_str(), block["name"].as_str()) else {
                    return Err(ApiError::invalid_param(
                        &at,
                        "A `tool_use` block needs `id` and `name`.",
                    ));
                };
                let input = match &block["input"] {
                    Value::Null => json!({}),
                    input => input.clone(),
                };
                calls.push(json!({
                    "id": id, "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                }));
            }
            ("user", "tool_result") => {
                let Some(id) = block["tool_use_id"].as_str() else {
                    return Err(ApiError::invalid_param(
                        &at,
                        "A `tool_result` block needs `tool_use_id`.",
                    ));
                };
                let content = match &block["content"] {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    Value::Array(parts) => parts
                        .iter()
                        .map(|p| match p["text"].as_str() {
                            Some(t) if p["type"] == "text" => Ok(t),
                            _ => Err(ApiError::invalid_param(
                                &format!("{at}.content"),
                                "Only text blocks are supported in a `tool_result`.",
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?
                        .join(""),
                    _ => {
                        return Err(ApiError::invalid_param(
                            &format!("{at}.content"),
                            "A `tool_result`'s content must be text or text blocks.",
                        ))
                    }
                };
                let content = match block["is_error"].as_bool() {
                    Some(true) => format!("Error: {content}"),
                    _ => content,
                };
                out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            (_, kind) => {
                return Err(ApiError::invalid_param(
                    &at,
                    format!(
                        "Content blocks of type `{kind}` are not supported in a `{role}` turn."
                    ),
                ))
            }
        }
    }
    match role {
        "assistant" => {
            let mut turn = json!({"role": "assistant", "content": text});
            if !calls.is_empty() {
                turn["tool_calls"] = Value::Array(calls);
            }
            out.push(turn);
        }
        // A user turn of only tool results has no text of its own.
        _ if text.is_empty() && blocks.iter().any(|b| b["type"] == "tool_result") => {}
        _ => out.push(json!({"role": "user", "content": text})),
    }
    Ok(())
}

/// `[{"name", "description", "input_schema"}]` as chat tools.
fn translate_tools(tools: &[Value]) -> Result<Vec<Value>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let kind = tool["type"].as_str().unwrap_or("custom");
            let Some(name) = tool["name"].as_str().filter(|_| kind == "custom") else {
                return Err(ApiError::invalid_param(
                    &format!("tools[{i}]"),
                    "Only client tools (`name`, `description`, `input_schema`) are supported.",
                ));
            };
            let mut function = json!({"name": name});
            if let Some(description) = tool.get("description").filter(|d| !d.is_null()) {
                function["description"] = description.clone();
            }
            if let Some(schema) = tool.get("input_schema").filter(|s| !s.is_null()) {
                function["parameters"] = schema.clone();
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

/// `tool_choice` as chat's: `auto`, `any` (must call: `required`), `tool` (that one), `none`.
fn translate_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match (choice["type"].as_str(), choice["name"].as_str()) {
        (Some("auto"), _) => Ok(json!("auto")),
        (Some("any"), _) => Ok(json!("required")),
        (Some("none"), _) => Ok(json!("none")),
        (Some("tool"), Some(name)) => Ok(json!({"type": "function", "function": {"name": name}})),
        _ => Err(ApiError::invalid_param(
            "tool_choice",
            "`tool_choice` must be {\"type\": \"auto\" | \"any\" | \"none\"} or {\"type\": \"tool\", \"name\": ...}.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> MessagesRequest {
        crate::openai::json::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_conversation_with_tools_becomes_a_chat_request() {
        let chat = request(
            r#"{"model":"m","max_tokens":32,"system":[{"type":"text","text":"Be brief."}],
                "stop_sequences":["END"],"metadata":{"user_id":"u1"},
                "messages":[{"role":"user","content":"Weather in Lyon?"},
                  {"role":"assistant","content":[{"type":"text","text":"Let me look."},{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Lyon"}}]},
                  {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":"12 C"}]}]}],
                "tools":[{"name":"get_weather","description":"d","input_schema":{"type":"object"}}],
                "tool_choice":{"type":"any"}}"#,
        )
        .to_chat(false)
        .unwrap();
        assert_eq!(chat["max_tokens"], 32);
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(chat["user"], "u1");
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(chat["tools"][0]["function"]["parameters"]["type"], "object");
        let messages = chat["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(messages[2]["content"], "Let me look.");
        assert_eq!(
            messages[2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Lyon\"}"
        );
        assert_eq!(
            messages[3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "12 C"})
        );
    }

    #[test]
    fn refuses_what_it_cannot_serve_naming_the_field() {
        for (body, param) in [
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}"#,
                "max_tokens",
            ),
            (r#"{"model":"m","max_tokens":5,"messages":[]}"#, "messages"),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"system","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{}}]}]}"#,
                "messages[0].content[0]",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"thinking":{"type":"enabled","budget_tokens":1024}}"#,
                "thinking",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"tool"}}"#,
                "tool_choice",
            ),
        ] {
            let err = request(body).to_chat(false).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
        }
        // `count_tokens` takes no `max_tokens`.
        assert!(
            request(r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#)
                .to_chat(true)
                .is_ok()
        );
    }
}

//! `POST /v1/responses`: OpenAI's Responses API, read and translated into a chat-completions
//! body (the conversation then runs through the chat pipeline like any other), and its
//! response object and stream events built from the one choice's answer.
//!
//! A conversation continues with `previous_response_id`: the stored response keeps its whole
//! history as input items (its predecessors', its own input, its output), which the next
//! request's input follows. `instructions` are not carried over (as OpenAI).

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::openai::response::{ChoiceEnd, UsageBody};
use crate::openai::tools::ToolCall;

/// The Responses API's request fields that the gateway serves. Those that change the answer
/// and that it cannot serve are refused by name; those about OpenAI's own service are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ResponsesRequest {
    /// The model's id.
    pub model: String,
    /// Text, or a list of input items (messages, function calls and their outputs).
    #[serde(default)]
    pub input: Option<Value>,
    /// A system message ahead of the conversation (not carried to the next response).
    #[serde(default)]
    pub instructions: Option<String>,
    /// The most tokens to generate.
    #[serde(default)]
    pub max_output_tokens: Option<i64>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", ...}}`.
    #[serde(default)]
    pub text: Option<Value>,
    /// Function tools: `[{"type": "function", "name", "description", "parameters"}]`.
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required`, or `{"type": "function", "name"}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Server-sent events rather than one body.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Keep the response (default `true`) for `GET` and `previous_response_id`.
    #[serde(default)]
    pub store: Option<bool>,
    /// The stored response this one continues.
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// Up to 16 string pairs, echoed.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// The end user.
    #[serde(default)]
    pub user: Option<String>,
    /// The end user (OpenAI's newer name).
    #[serde(default)]
    pub safety_identifier: Option<String>,
    /// Echoed (several calls may come in one answer either way).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Running in the background: not served.
    #[serde(default)]
    pub background: Option<bool>,
    /// OpenAI's stored conversations: not served (use `previous_response_id`).
    #[serde(default)]
    pub conversation: Option<Value>,
    /// OpenAI's stored prompts: not served.
    #[serde(default)]
    pub prompt: Option<Value>,
}

impl ResponsesRequest {
    /// Whether the answer is to be streamed.
    pub fn streamed(&self) -> bool {
        self.stream == Some(true)
    }

    /// Whether the response is to be kept.
    pub fn stored(&self) -> bool {
        self.store != Some(false)
    }

    /// Refuses what cannot be served, by name.
    pub fn check(&self) -> Result<(), ApiError> {
        for (param, asked) in [
            ("background", self.background == Some(true)),
            (
                "conversation",
                self.conversation.as_ref().is_some_and(|c| !c.is_null()),
            ),
            ("prompt", self.prompt.as_ref().is_some_and(|p| !p.is_null())),
        ] {
            if asked {
                return Err(ApiError::invalid_param(
                    param,
                    format!("`{param}` is not supported by this gateway."),
                ));
            }
        }
        Ok(())
    }

    /// The request's input as items (text is one user message).
    pub fn input_items(&self) -> Result<Vec<Value>, ApiError> {
        match &self.input {
            None | Some(Value::Null) => {
                Err(ApiError::invalid_param("input", "`input` is required."))
            }
            Some(Value::String(text)) => Ok(vec![json!({
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": text}],
            })]),
            Some(Value::Array(items)) if !items.is_empty() => Ok(items.clone()),
            Some(_) => Err(ApiError::invalid_param(
                "input",
                "`input` must be text or a non-empty list of items.",
            )),
        }
    }

    /// The request as a chat-completions body over `items` (the stored history, then this
    /// request's input).
    pub fn to_chat(&self, items: &[Value]) -> Result<Value, ApiError> {
        let mut chat = Map::new();
        chat.insert("model".into(), json!(self.model));
        let mut messages = Vec::new();
        if let Some(instructions) = self.instructions.as_ref().filter(|i| !i.is_empty()) {
            messages.push(json!({"role": "system", "content": instructions}));
        }
        items_to_messages(items, &mut messages)?;
        chat.insert("messages".into(), Value::Array(messages));
        if let Some(n) = self.max_output_tokens {
            if n < 1 {
                return Err(ApiError::invalid_param(
                    "max_output_tokens",
                    "`max_output_tokens` must be at least 1.",
                ));
            }
            chat.insert("max_tokens".into(), json!(n));
        }
        if self.streamed() {
            chat.insert("stream".into(), json!(true));
        }
        if let Some(t) = self.temperature {
            chat.insert("temperature".into(), json!(t));
        }
        if let Some(p) = self.top_p {
            chat.insert("top_p".into(), json!(p));
        }
        if let Some(user) = self.safety_identifier.as_ref().or(self.user.as_ref()) {
            chat.insert("user".into(), json!(user));
        }
        if let Some(tools) = self.tools.as_ref().filter(|t| !t.is_empty()) {
            chat.insert("tools".into(), Value::Array(translate_tools(tools)?));
        }
        if let Some(choice) = self.tool_choice.as_ref().filter(|c| !c.is_null()) {
            chat.insert("tool_choice".into(), translate_tool_choice(choice)?);
        }
        if let Some(format) = self.text.as_ref().and_then(|t| t.get("format")) {
            if let Some(response_format) = translate_format(format)? {
                chat.insert("response_format".into(), response_format);
            }
        }
        Ok(Value::Object(chat))
    }
}

/// An input item's type; a message may leave `type` out (it has a `role`).
pub(crate) fn item_kind(item: &Value) -> &str {
    item["type"]
        .as_str()
        .unwrap_or(if item.get("role").is_some() {
            "message"
        } else {
            ""
        })
}

/// Input items as chat messages: messages by role (text parts joined), function calls as an
/// assistant's tool calls (consecutive calls in one turn), their outputs as tool messages.
fn items_to_messages(items: &[Value], out: &mut Vec<Value>) -> Result<(), ApiError> {
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        match item_kind(item) {
            "message" => {
                let role = item["role"].as_str().unwrap_or_default();
                let role = match role {
                    "user" | "assistant" | "system" => role,
                    "developer" => "system",
                    other => {
                        return Err(ApiError::invalid_param(
                            &format!("{at}.role"),
                            format!("Invalid role `{other}`; expected `user`, `assistant`, `system` or `developer`."),
                        ))
                    }
                };
                let text = message_text(&item["content"], &at)?;
                out.push(json!({"role": role, "content": text}));
            }
            "function_call" => {
                let (Some(call_id), Some(name)) = (item["call_id"].as_str(), item["name"].as_str())
                else {
                    return Err(ApiError::invalid_param(
                        &at,
                        "A `function_call` item needs `call_id` and `name`.",
                    ));
                };
                let arguments = match &item["arguments"] {
                    Value::String(s) => s.clone(),
                    Value::Null => "{}".to_string(),
                    other => other.to_string(),
                };
                let call = json!({"id": call_id, "type": "function",
                                  "function": {"name": name, "arguments": arguments}});
                // Calls of one turn join the assistant message just before them.
                match out.last_mut() {
                    Some(last) if last["role"] == "assistant" => {
                        match last["tool_calls"].as_array_mut() {
                            Some(calls) => calls.push(call),
                            None => last["tool_calls"] = json!([call]),
                        }
                    }
                    _ => out.push(json!({"role": "assistant", "content": "", "tool_calls": [call]})),
                }
            }
            "function_call_output" => {
                let Some(call_id) = item["call_id"].as_str() else {
                    return Err(ApiError::invalid_param(
                        &at,
                        "A `function_call_output` item needs `call_id`.",
                    ));
                };
                let output = match &item["output"] {
                    Value::String(s) => s.clone(),
                    other @ Value::Array(_) => message_text(other, &format!("{at}.output"))?,
                    _ => {
                        return Err(ApiError::invalid_param(
                            &format!("{at}.output"),
                            "`output` must be text.",
                        ))
                    }
                };
                out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            // Reasoning summaries of other models carry nothing this one can use.
            "reasoning" => {}
            other => {
                return Err(ApiError::invalid_param(
                    &at,
                    format!("Input items of type `{other}` are not supported; only `message`, `function_call` and `function_call_output`."),
                ))
            }
        }
    }
    Ok(())
}

/// A message's text: a string, or `input_text` / `output_text` parts joined.
fn message_text(content: &Value, at: &str) -> Result<String, ApiError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("input_text" | "output_text" | "text"), Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid_param(
                            &format!("{at}.content[{j}]"),
                            format!(
                                "Content parts of type `{}` are not supported; only text.",
                                kind.unwrap_or("?")
                            ),
                        ))
                    }
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::invalid_param(
            &format!("{at}.content"),
            "`content` must be text or a list of text parts.",
        )),
    }
}

/// Function tools as chat tools; other kinds (web search, file search, ...) are refused.
fn translate_tools(tools: &[Value]) -> Result<Vec<Value>, ApiError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let Some(name) = tool["name"].as_str().filter(|_| tool["type"] == "function") else {
                return Err(ApiError::invalid_param(
                    &format!("tools[{i}]"),
                    format!(
                        "Tools of type `{}` are not supported; only `function`.",
                        tool["type"].as_str().unwrap_or("?")
                    ),
                ));
            };
            let mut function = json!({"name": name});
            for field in ["description", "parameters"] {
                if let Some(value) = tool.get(field).filter(|v| !v.is_null()) {
                    function[field] = value.clone();
                }
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

fn translate_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(s) if ["auto", "none", "required"].contains(&s.as_str()) => Ok(choice.clone()),
        _ => match (choice["type"].as_str(), choice["name"].as_str()) {
            (Some("function"), Some(name)) => {
                Ok(json!({"type": "function", "function": {"name": name}}))
            }
            _ => Err(ApiError::invalid_param(
                "tool_choice",
                "`tool_choice` must be `auto`, `none`, `required` or {\"type\": \"function\", \"name\": ...}.",
            )),
        },
    }
}

/// `text.format` as chat's `response_format` (`None` for plain text).
fn translate_format(format: &Value) -> Result<Option<Value>, ApiError> {
    match format["type"].as_str() {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = json!({
                "name": format["name"].as_str().unwrap_or("output"),
                "schema": format["schema"],
            });
            if let Some(strict) = format.get("strict").filter(|s| !s.is_null()) {
                schema["strict"] = strict.clone();
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        Some(other) => Err(ApiError::invalid_param(
            "text.format.type",
            format!("`{other}` is not a format; expected `text`, `json_object` or `json_schema`."),
        )),
    }
}

/// The response's identity and what it echoes of its request.
#[derive(Debug, Clone)]
pub struct ResponseDraft {
    /// `resp_...`.
    pub id: String,
    /// Unix seconds.
    pub created_at: u64,
    echo: Map<String, Value>,
}

impl ResponseDraft {
    /// A new response to `request`.
    pub fn new(request: &ResponsesRequest, store: bool) -> Self {
        let mut echo = Map::new();
        echo.insert("model".into(), json!(request.model));
        echo.insert("instructions".into(), json!(request.instructions));
        echo.insert("max_output_tokens".into(), json!(request.max_output_tokens));
        echo.insert(
            "temperature".into(),
            json!(request.temperature.unwrap_or(1.0)),
        );
        echo.insert("top_p".into(), json!(request.top_p.unwrap_or(1.0)));
        echo.insert(
            "tools".into(),
            json!(request.tools.clone().unwrap_or_default()),
        );
        echo.insert(
            "tool_choice".into(),
            request
                .tool_choice
                .clone()
                .filter(|c| !c.is_null())
                .unwrap_or(json!("auto")),
        );
        echo.insert(
            "text".into(),
            request
                .text
                .clone()
                .filter(|t| !t.is_null())
                .unwrap_or(json!({"format": {"type": "text"}})),
        );
        echo.insert(
            "parallel_tool_calls".into(),
            json!(request.parallel_tool_calls.unwrap_or(true)),
        );
        echo.insert(
            "previous_response_id".into(),
            json!(request.previous_response_id),
        );
        echo.insert("store".into(), json!(store));
        echo.insert(
            "metadata".into(),
            request
                .metadata
                .clone()
                .filter(|m| !m.is_null())
                .unwrap_or(json!({})),
        );
        if let Some(user) = &request.user {
            echo.insert("user".into(), json!(user));
        }
        echo.insert("reasoning".into(), json!({"effort": null, "summary": null}));
        echo.insert("truncation".into(), json!("disabled"));
        echo.insert("background".into(), json!(false));
        Self {
            id: format!("resp_{}", uuid::Uuid::new_v4().simple()),
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            echo,
        }
    }

    /// The response object in state `status` (`in_progress`, `completed`, `incomplete`,
    /// `failed`) with `output` so far.
    pub fn object(&self, status: &str, output: &[Value], usage: Option<&UsageBody>) -> Value {
        let mut object = Map::new();
        object.insert("id".into(), json!(self.id));
        object.insert("object".into(), json!("response"));
        object.insert("created_at".into(), json!(self.created_at));
        object.insert("status".into(), json!(status));
        object.insert("error".into(), Value::Null);
        object.insert(
            "incomplete_details".into(),
            match status {
                "incomplete" => json!({"reason": "max_output_tokens"}),
                _ => Value::Null,
            },
        );
        for (k, v) in &self.echo {
            object.insert(k.clone(), v.clone());
        }
        object.insert("output".into(), Value::Array(output.to_vec()));
        // Absent until known (the document has no `null` for it).
        if let Some(usage) = usage {
            object.insert("usage".into(), usage_json(usage));
        }
        Value::Object(object)
    }

    /// The object of a response that failed with `error`.
    pub fn failed(&self, output: &[Value], error: &ApiError) -> Value {
        let mut object = self.object("failed", output, None);
        object["error"] =
            json!({"code": error.code.unwrap_or("server_error"), "message": error.message});
        object
    }
}

/// The status a finished answer gives its response.
pub fn status_of(end: ChoiceEnd) -> &'static str {
    match end {
        ChoiceEnd::Engine(engine_api::FinishReason::Length) => "incomplete",
        _ => "completed",
    }
}

/// An assistant message output item with `text`.
pub fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message", "id": id, "status": status, "role": "assistant",
        "content": if status == "in_progress" { json!([]) } else { json!([text_part(text)]) },
    })
}

/// An `output_text` content part.
pub fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// A `function_call` output item for `call`.
pub fn call_item(id: &str, call: &ToolCall, status: &str) -> Value {
    let arguments = if status == "in_progress" {
        ""
    } else {
        call.arguments.as_str()
    };
    json!({
        "type": "function_call", "id": id, "call_id": call.id, "name": call.name,
        "arguments": arguments, "status": status,
    })
}

/// A new output item's id (`msg_...`, `fc_...`).
pub fn item_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The Responses API's usage.
pub fn usage_json(usage: &UsageBody) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.prompt_tokens_details.cached_tokens,
            "cache_write_tokens": 0,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> ResponsesRequest {
        crate::openai::json::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn items_become_a_chat_conversation() {
        let r = request(
            r#"{"model":"m","instructions":"Be brief.","max_output_tokens":20,
                "input":[{"role":"user","content":"Weather in Lyon?"},
                  {"type":"function_call","call_id":"call_1","name":"get_weather","arguments":"{\"city\":\"Lyon\"}"},
                  {"type":"function_call_output","call_id":"call_1","output":"12 C"}],
                "tools":[{"type":"function","name":"get_weather","parameters":{"type":"object"}}],
                "tool_choice":{"type":"function","name":"get_weather"},
                "text":{"format":{"type":"json_schema","name":"w","schema":{"type":"object"},"strict":true}}}"#,
        );
        let items = r.input_items().unwrap();
        let chat = r.to_chat(&items).unwrap();
        assert_eq!(chat["max_tokens"], 20);
        assert_eq!(chat["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(chat["response_format"]["json_schema"]["name"], "w");
        let messages = chat["messages"].as_array().unwrap();
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            messages[1],
            json!({"role": "user", "content": "Weather in Lyon?"})
        );
        assert_eq!(messages[2]["tool_calls"][0]["id"], "call_1");
        assert_eq!(
            messages[3],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "12 C"})
        );
        // Text input is one user message.
        let text = request(r#"{"model":"m","input":"hi"}"#);
        let chat = text.to_chat(&text.input_items().unwrap()).unwrap();
        assert_eq!(chat["messages"], json!([{"role": "user", "content": "hi"}]));
    }

    #[test]
    fn refuses_what_it_cannot_serve_naming_the_field() {
        let fails = |json: &str| {
            let r = request(json);
            r.check()
                .and_then(|()| r.input_items())
                .and_then(|items| r.to_chat(&items))
                .unwrap_err()
                .param
        };
        for (json, param) in [
            (r#"{"model":"m"}"#, "input"),
            (r#"{"model":"m","input":[]}"#, "input"),
            (
                r#"{"model":"m","input":"x","background":true}"#,
                "background",
            ),
            (
                r#"{"model":"m","input":"x","max_output_tokens":0}"#,
                "max_output_tokens",
            ),
            (
                r#"{"model":"m","input":[{"role":"wizard","content":"x"}]}"#,
                "input[0].role",
            ),
            (
                r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_image","image_url":"x"}]}]}"#,
                "input[0].content[0]",
            ),
            (
                r#"{"model":"m","input":"x","tools":[{"type":"web_search"}]}"#,
                "tools[0]",
            ),
            (
                r#"{"model":"m","input":[{"type":"item_reference","id":"x"}]}"#,
                "input[0]",
            ),
            (
                r#"{"model":"m","input":"x","text":{"format":{"type":"yaml"}}}"#,
                "text.format.type",
            ),
        ] {
            assert_eq!(fails(json).as_deref(), Some(param), "{json}");
        }
    }
}

//! Tool calling (`tools`, `tool_choice`), done by the gateway over plain generation and
//! structured output, so it works the same on every engine:
//!
//! - The functions go to the engine with the conversation (`Prompt::ChatWithTools`): a chat
//!   template that knows tools renders them; otherwise they are described in the system
//!   message in the Hermes format most open models are tuned on, earlier calls written as
//!   `<tool_call>{"name": ..., "arguments": ...}</tool_call>` (`engine_api::tools`).
//! - `tool_choice: "required"` or a named function constrains the whole answer to one call,
//!   `{"name": ..., "arguments": ...}`, with the arguments held to the function's JSON schema
//!   by the grammar engine: the call always parses and validates.
//! - `auto`: the model answers freely; an answer that opens with `<tool_call>` is read as
//!   calls (each block's JSON must name a listed function with object arguments; otherwise the
//!   answer stays text).
//! - `none`: the functions are not described and nothing is parsed.

use engine_api::tools::{CALL_CLOSE, CALL_OPEN};
use engine_api::OutputConstraint;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;

/// One function a tool offers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Function {
    /// Its name: what the model calls.
    pub name: String,
    /// What it does, for the model.
    #[serde(default)]
    pub description: Option<String>,
    /// The JSON Schema of its arguments (an object schema); absent: no arguments.
    #[serde(default)]
    pub parameters: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Tool {
    #[serde(rename = "type")]
    kind: String,
    function: Option<Function>,
}

/// Whether and how the model may call functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Never.
    None,
    /// If it decides to.
    Auto,
    /// It must call one of them.
    Required,
    /// It must call this one.
    Named(String),
}

/// A request's tools and tool choice, checked.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    /// The functions offered.
    pub functions: Vec<Function>,
    /// What the model may do with them.
    pub choice: ToolChoice,
}

/// A call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// `call_...`, for the `tool` message that answers it.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// Its arguments, as a JSON text (as OpenAI sends them).
    pub arguments: String,
}

impl ToolCall {
    /// OpenAI's JSON for it; `index` is its place among the choice's calls (streams need it).
    pub fn to_json(&self, index: Option<usize>) -> Value {
        let mut call = json!({
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        });
        if let Some(index) = index {
            call["index"] = json!(index);
        }
        call
    }
}

/// The most functions one request may offer.
const MAX_TOOLS: usize = 128;

impl ToolSpec {
    /// Reads `tools` and `tool_choice`; `None` when no function is offered (then
    /// `tool_choice` may only be absent or `none`/`auto`).
    pub fn from_request(
        tools: Option<&Value>,
        tool_choice: Option<&Value>,
    ) -> Result<Option<Self>, ApiError> {
        let functions = match tools.filter(|t| !t.is_null()) {
            None => Vec::new(),
            Some(tools) => parse_tools(tools)?,
        };
        let choice = match tool_choice.filter(|c| !c.is_null()) {
            None if functions.is_empty() => ToolChoice::None,
            None => ToolChoice::Auto,
            Some(Value::String(s)) if s == "none" => ToolChoice::None,
            Some(Value::String(s)) if s == "auto" => ToolChoice::Auto,
            Some(Value::String(s)) if s == "required" => ToolChoice::Required,
            Some(named) => match named.pointer("/function/name").and_then(Value::as_str) {
                Some(name) if named["type"] == "function" => ToolChoice::Named(name.to_string()),
                _ => {
                    return Err(ApiError::invalid_param(
                        "tool_choice",
                        "`tool_choice` must be `none`, `auto`, `required` or {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                    ))
                }
            },
        };
        let needs_tools = matches!(choice, ToolChoice::Required | ToolChoice::Named(_));
        if functions.is_empty() {
            if needs_tools {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    "`tool_choice` asks for a call, but `tools` offers no function.",
                ));
            }
            return Ok(None);
        }
        if let ToolChoice::Named(name) = &choice {
            if !functions.iter().any(|f| &f.name == name) {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    format!("`tool_choice` names `{name}`, which is not in `tools`."),
                ));
            }
        }
        let spec = Self { functions, choice };
        // The forced call's schema must compile, whatever engine serves the request.
        if let Some(constraint) = spec.constraint() {
            structured_output::check(&constraint).map_err(|e| {
                ApiError::invalid_param(
                    "tools",
                    format!("A function's `parameters` cannot be used: {e}."),
                )
            })?;
        }
        Ok(Some(spec))
    }

    /// Does the model see the functions (every choice but `none`)?
    pub fn offered(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The functions in OpenAI's shape, for the prompt (the engine renders them).
    pub fn tool_values(&self) -> Vec<Value> {
        self.functions
            .iter()
            .map(|f| {
                json!({"type": "function", "function": {
                    "name": f.name,
                    "description": f.description.clone().unwrap_or_default(),
                    "parameters": parameters_schema(f),
                }})
            })
            .collect()
    }

    /// The constraint of a forced call: one `{"name", "arguments"}` object whose arguments
    /// match the (or one of the) function's schema.
    pub fn constraint(&self) -> Option<OutputConstraint> {
        let call = |f: &Function| {
            json!({
                "type": "object",
                "properties": {"name": {"const": f.name}, "arguments": parameters_schema(f)},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        };
        let schema = match &self.choice {
            ToolChoice::None | ToolChoice::Auto => return None,
            ToolChoice::Named(name) => call(self.functions.iter().find(|f| &f.name == name)?),
            ToolChoice::Required if self.functions.len() == 1 => call(&self.functions[0]),
            ToolChoice::Required => {
                json!({"anyOf": self.functions.iter().map(call).collect::<Vec<_>>()})
            }
        };
        Some(OutputConstraint::JsonSchema(schema))
    }

    /// Reads the model's answer as calls: a forced answer is one call object; an `auto`
    /// answer calls when it opens with `<tool_call>` blocks. `None`: the answer is text.
    pub fn parse(&self, text: &str) -> Option<Vec<ToolCall>> {
        let calls = match self.choice {
            ToolChoice::None => return None,
            ToolChoice::Required | ToolChoice::Named(_) => vec![self.read_call(text.trim())?],
            ToolChoice::Auto => {
                let mut rest = text.trim_start();
                let mut calls = Vec::new();
                while let Some(after) = rest.strip_prefix(CALL_OPEN) {
                    let (body, tail) = after.split_once(CALL_CLOSE).unwrap_or((after, ""));
                    calls.push(self.read_call(body.trim())?);
                    rest = tail.trim_start();
                }
                if calls.is_empty() || !rest.is_empty() {
                    return None;
                }
                calls
            }
        };
        Some(calls)
    }

    fn read_call(&self, json_text: &str) -> Option<ToolCall> {
        let value: Value = serde_json::from_str(json_text).ok()?;
        let name = value.get("name")?.as_str()?;
        let arguments = value.get("arguments").filter(|a| a.is_object())?;
        self.functions
            .iter()
            .any(|f| f.name == name)
            .then(|| ToolCall {
                id: format!("call_{}", uuid::Uuid::new_v4().simple()),
                name: name.to_string(),
                arguments: arguments.to_string(),
            })
    }

    /// While an `auto` answer streams: could `so_far` still open a call (so it must be held
    /// back rather than sent as content)?
    pub fn may_open_call(&self, so_far: &str) -> bool {
        match self.choice {
            ToolChoice::None => false,
            ToolChoice::Required | ToolChoice::Named(_) => true,
            ToolChoice::Auto => {
                let start = so_far.trim_start();
                start.starts_with(CALL_OPEN) || CALL_OPEN.starts_with(start)
            }
        }
    }
}

/// A function's argument schema; an absent one takes no arguments.
fn parameters_schema(f: &Function) -> Value {
    f.parameters
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}))
}

fn parse_tools(tools: &Value) -> Result<Vec<Function>, ApiError> {
    let list = tools
        .as_array()
        .ok_or_else(|| ApiError::invalid_param("tools", "`tools` must be a list."))?;
    if list.len() > MAX_TOOLS {
        return Err(ApiError::invalid_param(
            "tools",
            format!("At most {MAX_TOOLS} tools are allowed, got {}.", list.len()),
        ));
    }
    let mut functions: Vec<Function> = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let param = format!("tools[{i}]");
        let tool: Tool = serde_json::from_value(tool.clone())
            .map_err(|e| ApiError::invalid_param(&param, format!("Invalid tool: {e}.")))?;
        let function = match (tool.kind.as_str(), tool.function) {
            ("function", Some(function)) => function,
            (kind, _) => {
                return Err(ApiError::invalid_param(
                    &param,
                    format!(
                    "Only tools of type `function` with a `function` are supported, got `{kind}`."
                ),
                ))
            }
        };
        let valid_name = !function.name.is_empty()
            && function.name.len() <= 64
            && function
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            return Err(ApiError::invalid_param(
                &format!("{param}.function.name"),
                "A function name must be 1-64 characters of a-z, A-Z, 0-9, `_` and `-`.",
            ));
        }
        if functions.iter().any(|f| f.name == function.name) {
            return Err(ApiError::invalid_param(
                &format!("{param}.function.name"),
                format!("Two tools are named `{}`.", function.name),
            ));
        }
        if let Some(parameters) = &function.parameters {
            let is_object_schema =
                parameters.is_object() && parameters.get("type").is_none_or(|t| t == "object");
            if !is_object_schema {
                return Err(ApiError::invalid_param(
                    &format!("{param}.function.parameters"),
                    "`parameters` must be a JSON Schema of an object.",
                ));
            }
            structured_output::check(&OutputConstraint::JsonSchema(parameters.clone())).map_err(
                |e| {
                    ApiError::invalid_param(
                        &format!("{param}.function.parameters"),
                        format!("The schema cannot be used: {e}."),
                    )
                },
            )?;
        }
        functions.push(function);
    }
    Ok(functions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!([{"type": "function", "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        }}, {"type": "function", "function": {"name": "get_time"}}])
    }

    #[test]
    fn reads_tools_and_choices() {
        let tools = weather();
        let spec = ToolSpec::from_request(Some(&tools), None).unwrap().unwrap();
        assert_eq!(spec.choice, ToolChoice::Auto);
        assert_eq!(spec.functions.len(), 2);
        let named = json!({"type": "function", "function": {"name": "get_time"}});
        let spec = ToolSpec::from_request(Some(&tools), Some(&named))
            .unwrap()
            .unwrap();
        assert_eq!(spec.choice, ToolChoice::Named("get_time".into()));
        assert!(spec.constraint().is_some(), "a named call is forced");
        assert!(ToolSpec::from_request(None, Some(&json!("auto")))
            .unwrap()
            .is_none());
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let tools = weather();
        for (tools, choice, param) in [
            (json!({"a": 1}), None, "tools"),
            (json!([{"type": "retrieval"}]), None, "tools[0]"),
            (
                json!([{"type": "function", "function": {"name": "bad name"}}]),
                None,
                "tools[0].function.name",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
                None,
                "tools[0].function.parameters",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "nope"}}}}}]),
                None,
                "tools[0].function.parameters",
            ),
            (
                tools.clone(),
                Some(json!({"type": "function", "function": {"name": "missing"}})),
                "tool_choice",
            ),
            (tools.clone(), Some(json!("sometimes")), "tool_choice"),
            (json!([]), Some(json!("required")), "tool_choice"),
        ] {
            let err = ToolSpec::from_request(Some(&tools), choice.as_ref()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{tools} {choice:?}");
        }
    }

    #[test]
    fn parses_forced_and_auto_answers() {
        let tools = weather();
        let forced = ToolSpec::from_request(Some(&tools), Some(&json!("required")))
            .unwrap()
            .unwrap();
        let calls = forced
            .parse(r#"{"name": "get_weather", "arguments": {"city": "Lyon"}}"#)
            .unwrap();
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(&calls[0].arguments).unwrap(),
            json!({"city": "Lyon"})
        );
        assert!(calls[0].id.starts_with("call_"));
        let auto = ToolSpec::from_request(Some(&tools), None).unwrap().unwrap();
        let text = "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>\n<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}</tool_call>";
        assert_eq!(auto.parse(text).unwrap().len(), 2);
        assert!(auto.parse("It is sunny.").is_none());
        assert!(auto
            .parse("<tool_call>{\"name\": \"unknown\", \"arguments\": {}}</tool_call>")
            .is_none());
        assert!(auto.may_open_call("  <tool"));
        assert!(!auto.may_open_call("Hello"));
    }
}

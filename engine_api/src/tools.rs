//! Tools in the prompt when the model's chat template has no tool syntax (SmolLM2's has none):
//! the Hermes format most open models are tuned on. The functions are described in the system
//! message; earlier calls are written as `<tool_call>{"name": ..., "arguments": ...}</tool_call>`
//! in the assistant's turn; results are `tool` messages. Templates that do know tools get the
//! conversation as it is, with `tools` (see [`the local engine's chat template`]).

use serde_json::{json, Value};

use crate::chat::ChatMessage;

/// The opening tag of a call in the model's text.
pub const CALL_OPEN: &str = "<tool_call>";
/// The closing tag.
pub const CALL_CLOSE: &str = "</tool_call>";

/// The system message that lists `tools` (OpenAI's `[{"type": "function", "function": ...}]`)
/// and says how to call them.
pub fn tools_system_prompt(tools: &[Value]) -> String {
    let described: Vec<String> = tools.iter().map(Value::to_string).collect();
    format!(
        "You are a function calling AI model. You are provided with function signatures within <tools></tools> XML tags. You may call one or more functions to assist with the user query. Here are the available tools:\n<tools>\n{}\n</tools>\nFor each function call, return a JSON object with the function name and arguments within {CALL_OPEN}{CALL_CLOSE} XML tags:\n{CALL_OPEN}\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n{CALL_CLOSE}",
        described.join("\n")
    )
}

/// An assistant message's calls (OpenAI's `tool_calls`), as the model writes them.
pub fn render_calls(calls: &[Value]) -> String {
    calls
        .iter()
        .map(|call| {
            let function = &call["function"];
            let arguments = arguments_object(&function["arguments"]);
            // Written out so that `name` comes first, as the system prompt shows it.
            format!(
                "{CALL_OPEN}\n{{\"name\": {}, \"arguments\": {arguments}}}\n{CALL_CLOSE}",
                function["name"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// OpenAI sends a call's arguments as a JSON text; templates and the Hermes format want the
/// object (an unparsable text stays a string).
pub fn arguments_object(arguments: &Value) -> Value {
    match arguments.as_str() {
        Some(text) => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
        None => arguments.clone(),
    }
}

/// The conversation in plain messages for a template without tool syntax: `tools` (if any)
/// described in the system message (added, or after the conversation's own), calls written into
/// the assistant turns.
pub fn flatten(messages: &[ChatMessage], tools: &[Value]) -> Vec<ChatMessage> {
    let mut flat: Vec<ChatMessage> = messages
        .iter()
        .map(|m| {
            let mut content = m.content.clone();
            if let Some(calls) = m.tool_calls.as_deref().filter(|c| !c.is_empty()) {
                if !content.is_empty() {
                    content.push('\n');
                }
                content.push_str(&render_calls(calls));
            }
            ChatMessage::new(m.role.clone(), content)
        })
        .collect();
    if !tools.is_empty() {
        let prompt = tools_system_prompt(tools);
        match flat.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{prompt}", first.content);
            }
            _ => flat.insert(0, ChatMessage::new("system", prompt)),
        }
    }
    flat
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_join_the_system_message_and_calls_the_assistant_turns() {
        let tools = vec![json!({"type": "function", "function": {"name": "get_weather"}})];
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(vec![
            json!({"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}),
        ]);
        let messages = vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            call,
        ];
        let flat = flatten(&messages, &tools);
        assert!(
            flat[0].content.starts_with("Be brief.\n\n<")
                || flat[0].content.starts_with("Be brief.\n\nYou")
        );
        assert!(flat[0].content.contains("get_weather"));
        assert_eq!(
            flat[2].content,
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\":1}}\n</tool_call>"
        );
        assert!(flat.iter().all(|m| m.tool_calls.is_none()));
        // No tools: the calls are still written, nothing is added.
        assert_eq!(flatten(&messages, &[]).len(), 3);
        assert_eq!(flatten(&messages, &[])[0].content, "Be brief.");
    }
}

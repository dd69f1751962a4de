//! Anthropic's response shapes: the message (`{"type": "message", "content": [...]}`), its
//! stream of named events, and the usage they carry.

use serde_json::{json, Value};

use crate::openai::response::{ChoiceEnd, UsageBody};
use crate::openai::tools::ToolCall;

/// A message's identity: shared by its body and every event of its stream.
#[derive(Debug, Clone)]
pub struct MessageMeta {
    /// `msg_...`.
    pub id: String,
    /// The model as the client named it.
    pub model: String,
}

impl MessageMeta {
    /// A new message's identity.
    pub fn new(model: &str) -> Self {
        Self {
            id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            model: model.to_string(),
        }
    }

    /// The whole message.
    pub fn message(
        &self,
        text: &str,
        calls: Option<&[ToolCall]>,
        end: ChoiceEnd,
        usage: &UsageBody,
    ) -> Value {
        let mut content = Vec::new();
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in calls.unwrap_or_default() {
            content.push(tool_use_block(call));
        }
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason(end),
            "stop_sequence": null,
            "usage": usage_json(usage),
        })
    }

    /// `message_start`: the message with no content yet; `prompt_tokens` as admission counted
    /// them.
    pub fn start_event(&self, prompt_tokens: u64) -> Value {
        json!({
            "type": "message_start",
            "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": 0},
            },
        })
    }
}

/// A `tool_use` content block for `call` (its arguments parsed back into an object).
pub fn tool_use_block(call: &ToolCall) -> Value {
    let input: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
    json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input})
}

/// Anthropic's `stop_reason`. A stop string ends the answer as `end_turn`: the engine does not
/// say which of the stop strings matched, so `stop_sequence` is not reported.
pub fn stop_reason(end: ChoiceEnd) -> &'static str {
    match end {
        ChoiceEnd::Engine(engine_api::FinishReason::Stop) => "end_turn",
        ChoiceEnd::Engine(engine_api::FinishReason::Length) => "max_tokens",
        ChoiceEnd::ToolCalls => "tool_use",
    }
}

/// Anthropic's usage: `input_tokens` are those not read from the cache.
pub fn usage_json(usage: &UsageBody) -> Value {
    let cached = usage.prompt_tokens_details.cached_tokens;
    json!({
        "input_tokens": usage.prompt_tokens.saturating_sub(cached),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
        "output_tokens": usage.completion_tokens,
    })
}

/// The stream's events, in order, as (event name, data).
pub mod events {
    use super::*;

    /// `content_block_start` of a text block.
    pub fn text_start(index: usize) -> Value {
        json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
    }

    /// `content_block_delta` with text.
    pub fn text_delta(index: usize, text: &str) -> Value {
        json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}})
    }

    /// `content_block_start` of a `tool_use` block (its input follows as JSON deltas).
    pub fn tool_start(index: usize, call: &ToolCall) -> Value {
        json!({"type": "content_block_start", "index": index,
               "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}})
    }

    /// `content_block_delta` with the call's input, whole.
    pub fn tool_input(index: usize, call: &ToolCall) -> Value {
        json!({"type": "content_block_delta", "index": index,
               "delta": {"type": "input_json_delta", "partial_json": call.arguments}})
    }

    /// `content_block_stop`.
    pub fn block_stop(index: usize) -> Value {
        json!({"type": "content_block_stop", "index": index})
    }

    /// `message_delta`: how it ended, and the usage.
    pub fn message_delta(end: ChoiceEnd, usage: &UsageBody) -> Value {
        json!({"type": "message_delta",
               "delta": {"stop_reason": stop_reason(end), "stop_sequence": null},
               "usage": usage_json(usage)})
    }

    /// `message_stop`.
    pub fn message_stop() -> Value {
        json!({"type": "message_stop"})
    }
}

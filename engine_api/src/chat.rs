//! One message of a conversation, as engines receive it.

use serde::Serialize;

/// One message of a conversation. `content` is plain text: the gateway flattens OpenAI's
/// content parts before it gets here.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The message's text.
    pub content: String,
    /// An assistant message's calls, in OpenAI's shape with each call's `arguments` as an
    /// object (as chat templates that know tools read them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A `tool` message: the call it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message of `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
        }
    }
}

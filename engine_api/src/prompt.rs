//! What to complete: a prompt as text, a conversation (with tools) or token ids, and a prompt
//! made ready for submission.

use std::sync::Arc;

use crate::chat::ChatMessage;

/// What to complete.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Raw text (the completions endpoint).
    Text(String),
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// A conversation with the functions the model may call (OpenAI's `tools`), rendered
    /// through the chat template if it knows tools, else in the system message
    /// ([`crate::tools`]).
    ChatWithTools(Vec<ChatMessage>, Arc<Vec<serde_json::Value>>),
    /// Pre-tokenised input.
    Tokens(Vec<u32>),
}

impl Prompt {
    /// A conversation as plain messages, for engines that do not render templates themselves
    /// (remote upstreams, the synthetic engine): tools described in the system message and
    /// calls written out. `None` for text and token prompts.
    pub fn plain_messages(&self) -> Option<Vec<ChatMessage>> {
        match self {
            Prompt::Chat(messages) => Some(crate::tools::flatten(messages, &[])),
            Prompt::ChatWithTools(messages, tools) => Some(crate::tools::flatten(messages, tools)),
            Prompt::Text(_) | Prompt::Tokens(_) => None,
        }
    }
}

/// A prompt made ready for submission, with its size for admission.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    /// What to submit: token ids for local engines (tokenised once, here), the original text or
    /// conversation for remote ones (the upstream renders and tokenises it).
    pub prompt: Prompt,
    /// Prompt tokens: exact for local engines, an estimate for remote ones (see
    /// [`PreparedPrompt::estimated`]).
    pub tokens: usize,
    /// True when `tokens` is an estimate; billing then uses the upstream's reported usage.
    pub estimated: bool,
}

impl PreparedPrompt {
    /// A prompt tokenised by a local engine: submitted as its ids, sized exactly.
    pub fn tokenized(ids: Vec<u32>) -> Self {
        Self {
            tokens: ids.len(),
            prompt: Prompt::Tokens(ids),
            estimated: false,
        }
    }
}

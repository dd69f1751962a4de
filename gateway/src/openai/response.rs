//! Response bodies: whole responses and streamed chunks, for both endpoints.

use engines::{FinishReason, Usage};
use serde::Serialize;
use serde_json::{json, Value};

/// OpenAI's `usage` object.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct UsageBody {
    /// Tokens of the prompt(s).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl UsageBody {
    /// Adds one choice's usage.
    pub fn add(&mut self, usage: Usage) {
        self.prompt_tokens += usage.prompt_tokens;
        self.completion_tokens += usage.completion_tokens;
        self.total_tokens = self.prompt_tokens + self.completion_tokens;
    }
}

/// What happened to one choice in a stream.
#[derive(Debug, Clone, Copy)]
pub enum ChoiceEvent<'a> {
    /// The choice opened (chat announces the assistant role here).
    Start,
    /// Text of one token.
    Text(&'a str),
    /// The choice finished.
    Finish(FinishReason),
}

/// A finished choice of a non-streamed response.
#[derive(Debug, Clone)]
pub struct FinishedChoice {
    /// The choice's text.
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// The two endpoints' response formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

/// Identity of one response: shared by all its chunks.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    /// Which format.
    pub endpoint: Endpoint,
    /// `chatcmpl-...` or `cmpl-...`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model as the client named it.
    pub model: String,
}

impl ResponseMeta {
    /// A new response's identity for `model`.
    pub fn new(endpoint: Endpoint, model: &str) -> Self {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
        };
        Self {
            endpoint,
            id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            model: model.to_string(),
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        })
    }

    /// A stream chunk for one choice event; `None` when the endpoint sends nothing for it.
    /// With `include_usage`, every chunk carries `"usage": null`, as OpenAI sends them.
    pub fn chunk(
        &self,
        index: usize,
        event: ChoiceEvent<'_>,
        include_usage: bool,
    ) -> Option<Value> {
        let choice = match (self.endpoint, event) {
            (Endpoint::Chat, ChoiceEvent::Start) => json!({
                "index": index, "delta": {"role": "assistant", "content": ""},
                "logprobs": null, "finish_reason": null,
            }),
            (Endpoint::Chat, ChoiceEvent::Text(text)) => json!({
                "index": index, "delta": {"content": text}, "logprobs": null, "finish_reason": null,
            }),
            (Endpoint::Chat, ChoiceEvent::Finish(reason)) => json!({
                "index": index, "delta": {}, "logprobs": null, "finish_reason": reason.as_str(),
            }),
            (Endpoint::Completions, ChoiceEvent::Start) => return None,
            (Endpoint::Completions, ChoiceEvent::Text(text)) => json!({
                "index": index, "text": text, "logprobs": null, "finish_reason": null,
            }),
            (Endpoint::Completions, ChoiceEvent::Finish(reason)) => json!({
                "index": index, "text": "", "logprobs": null, "finish_reason": reason.as_str(),
            }),
        };
        let mut chunk = self.envelope(true, vec![choice]);
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        Some(chunk)
    }

    /// The last chunk of a stream with `include_usage`: no choices, the total usage.
    pub fn usage_chunk(&self, usage: UsageBody) -> Value {
        let mut chunk = self.envelope(true, Vec::new());
        chunk["usage"] = json!(usage);
        chunk
    }

    /// A whole (non-streamed) response.
    pub fn response(&self, choices: &[FinishedChoice], usage: UsageBody) -> Value {
        let choices = choices
            .iter()
            .enumerate()
            .map(|(index, c)| match self.endpoint {
                Endpoint::Chat => json!({
                    "index": index,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": null,
                    "finish_reason": c.finish_reason.as_str(),
                }),
                Endpoint::Completions => json!({
                    "index": index, "text": c.text, "logprobs": null,
                    "finish_reason": c.finish_reason.as_str(),
                }),
            })
            .collect();
        let mut body = self.envelope(false, choices);
        body["usage"] = json!(usage);
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_chunks_follow_openai() {
        let meta = ResponseMeta::new(Endpoint::Chat, "m");
        assert!(meta.id.starts_with("chatcmpl-"));
        let start = meta.chunk(0, ChoiceEvent::Start, false).unwrap();
        assert_eq!(start["object"], "chat.completion.chunk");
        assert_eq!(start["choices"][0]["delta"]["role"], "assistant");
        assert!(start.get("usage").is_none());
        let text = meta.chunk(0, ChoiceEvent::Text("hi"), true).unwrap();
        assert_eq!(text["choices"][0]["delta"]["content"], "hi");
        assert!(text["usage"].is_null() && text.get("usage").is_some());
        let end = meta
            .chunk(0, ChoiceEvent::Finish(FinishReason::Length), false)
            .unwrap();
        assert_eq!(end["choices"][0]["finish_reason"], "length");
        let mut usage = UsageBody::default();
        usage.add(Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
        });
        let last = meta.usage_chunk(usage);
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 7);
    }

    #[test]
    fn completion_response_follows_openai() {
        let meta = ResponseMeta::new(Endpoint::Completions, "m");
        assert!(meta.chunk(0, ChoiceEvent::Start, false).is_none());
        let body = meta.response(
            &[FinishedChoice {
                text: "x".into(),
                finish_reason: FinishReason::Stop,
            }],
            UsageBody::default(),
        );
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["choices"][0]["text"], "x");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
    }
}

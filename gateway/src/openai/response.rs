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

    /// A whole response's body around its choices (chunks are [`Self::chunk_envelope`]).
    fn envelope(&self, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        })
    }

    /// A stream chunk for one choice event, as its JSON text; `None` when the endpoint sends
    /// nothing for it. With `include_usage`, every chunk carries `"usage": null`, as OpenAI
    /// sends them. Written straight from borrowed fields (one per token: no JSON tree, no key
    /// strings allocated).
    pub fn chunk(
        &self,
        index: usize,
        event: ChoiceEvent<'_>,
        include_usage: bool,
    ) -> Option<String> {
        use ChoiceEvent::{Finish, Start, Text};
        // Chat chunks carry a `delta`, text-completion chunks a `text`.
        let (delta, text, finish_reason) = match (self.endpoint, event) {
            (Endpoint::Chat, Start) => (Some(Delta::opening()), None, None),
            (Endpoint::Chat, Text(text)) => (Some(Delta::text(text)), None, None),
            (Endpoint::Chat, Finish(reason)) => (Some(Delta::default()), None, Some(reason)),
            // Text completions have no opening chunk.
            (Endpoint::Completions, Start) => return None,
            (Endpoint::Completions, Text(text)) => (None, Some(text), None),
            (Endpoint::Completions, Finish(reason)) => (None, Some(""), Some(reason)),
        };
        let choice = ChunkChoice {
            index,
            delta,
            text,
            logprobs: None,
            finish_reason: finish_reason.map(FinishReason::as_str),
        };
        let usage = include_usage.then_some(None);
        let envelope = self.chunk_envelope([choice], usage);
        Some(serde_json::to_string(&envelope).expect("a chunk serialises"))
    }

    /// The last chunk of a stream with `include_usage`: no choices, the total usage.
    pub fn usage_chunk(&self, usage: UsageBody) -> String {
        let envelope = self.chunk_envelope::<[ChunkChoice; 0]>([], Some(Some(usage)));
        serde_json::to_string(&envelope).expect("a chunk serialises")
    }

    fn chunk_envelope<C: Serialize>(
        &self,
        choices: C,
        usage: Option<Option<UsageBody>>,
    ) -> ChunkEnvelope<'_, C> {
        ChunkEnvelope {
            id: &self.id,
            object: self.object(true),
            created: self.created,
            model: &self.model,
            system_fingerprint: None,
            choices,
            usage,
        }
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
        let mut body = self.envelope(choices);
        body["usage"] = json!(usage);
        body
    }
}

/// A streamed chunk, in OpenAI's field order.
#[derive(Serialize)]
struct ChunkEnvelope<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: Option<()>,
    choices: C,
    /// Absent without `include_usage`; `null` on every chunk but the last with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageBody>>,
}

/// One choice of a chunk: `delta` in chat streams, `text` in text-completion streams.
#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<Delta<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

/// What a chat chunk adds to the message: the role once, then text.
#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

impl<'a> Delta<'a> {
    fn opening() -> Self {
        Delta {
            role: Some("assistant"),
            content: Some(""),
        }
    }

    fn text(text: &'a str) -> Self {
        Delta {
            role: None,
            content: Some(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_chunks_follow_openai() {
        let meta = ResponseMeta::new(Endpoint::Chat, "m");
        assert!(meta.id.starts_with("chatcmpl-"));
        let parse = |text: String| serde_json::from_str::<Value>(&text).unwrap();
        let start = parse(meta.chunk(0, ChoiceEvent::Start, false).unwrap());
        assert_eq!(start["id"], meta.id.as_str());
        assert_eq!(start["model"], "m");
        assert!(start["system_fingerprint"].is_null());
        assert_eq!(start["choices"][0]["delta"]["content"], "");
        assert_eq!(start["object"], "chat.completion.chunk");
        assert_eq!(start["choices"][0]["delta"]["role"], "assistant");
        assert!(start.get("usage").is_none());
        let text = parse(meta.chunk(0, ChoiceEvent::Text("hi"), true).unwrap());
        assert!(text["choices"][0]["delta"].get("role").is_none());
        assert!(
            text["choices"][0].get("text").is_none(),
            "chat chunks have no `text`"
        );
        assert_eq!(text["choices"][0]["delta"]["content"], "hi");
        assert!(text["usage"].is_null() && text.get("usage").is_some());
        let end = parse(
            meta.chunk(0, ChoiceEvent::Finish(FinishReason::Length), false)
                .unwrap(),
        );
        assert_eq!(end["choices"][0]["finish_reason"], "length");
        assert_eq!(end["choices"][0]["delta"], json!({}));
        assert!(text["choices"][0]["finish_reason"].is_null());
        let mut usage = UsageBody::default();
        usage.add(Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
        });
        let last = parse(meta.usage_chunk(usage));
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 7);
    }

    #[test]
    fn completion_response_follows_openai() {
        let meta = ResponseMeta::new(Endpoint::Completions, "m");
        assert!(meta.chunk(0, ChoiceEvent::Start, false).is_none());
        let parse = |text: String| serde_json::from_str::<Value>(&text).unwrap();
        let token = parse(meta.chunk(1, ChoiceEvent::Text("a"), false).unwrap());
        assert_eq!(token["object"], "text_completion");
        assert_eq!(token["choices"][0]["index"], 1);
        assert_eq!(token["choices"][0]["text"], "a");
        assert!(
            token["choices"][0].get("delta").is_none(),
            "text chunks have no `delta`"
        );
        assert!(token["choices"][0]["finish_reason"].is_null());
        assert!(token.get("usage").is_none());
        let end = parse(
            meta.chunk(1, ChoiceEvent::Finish(FinishReason::Stop), true)
                .unwrap(),
        );
        assert_eq!(end["choices"][0]["text"], "");
        assert_eq!(end["choices"][0]["finish_reason"], "stop");
        assert!(end["usage"].is_null() && end.get("usage").is_some());
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

//! Response bodies: whole responses and streamed chunks, for both endpoints.

use engine_api::{FinishReason, Logprobs, TokenLogprob, Usage};
use serde::Serialize;
use serde_json::{json, Value};

use crate::openai::tools::ToolCall;

/// OpenAI's `usage` object.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct UsageBody {
    /// Tokens of the prompt(s).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
    /// How the prompt tokens were served.
    pub prompt_tokens_details: PromptTokensDetails,
}

/// OpenAI's `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    /// Prompt tokens found in the prefix cache (not computed again).
    pub cached_tokens: usize,
}

impl UsageBody {
    /// Adds one choice's usage.
    pub fn add(&mut self, usage: Usage) {
        self.prompt_tokens += usage.prompt_tokens;
        self.completion_tokens += usage.completion_tokens;
        self.total_tokens = self.prompt_tokens + self.completion_tokens;
        self.prompt_tokens_details.cached_tokens += usage.cached_tokens;
    }
}

/// Why a choice ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChoiceEnd {
    /// The engine's reason (`stop`, `length`).
    Engine(FinishReason),
    /// The answer is tool calls (`tool_calls`).
    ToolCalls,
}

impl ChoiceEnd {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChoiceEnd::Engine(reason) => reason.as_str(),
            ChoiceEnd::ToolCalls => "tool_calls",
        }
    }
}

/// Text of one or more tokens, with their log probabilities when asked for.
#[derive(Debug, Clone, Copy)]
pub struct TextPiece<'a> {
    /// The text.
    pub text: &'a str,
    /// Each token's log probabilities (empty when not asked for).
    pub logprobs: &'a [Logprobs],
    /// Where `text` starts in the choice's text, in bytes (the completions endpoint's
    /// `text_offset`).
    pub offset: usize,
}

/// What happened to one choice in a stream.
#[derive(Debug, Clone, Copy)]
pub enum ChoiceEvent<'a> {
    /// The choice opened (chat announces the assistant role here).
    Start,
    /// Text of one token (or of several held back while a tool call was possible).
    Text(TextPiece<'a>),
    /// The answer's tool calls, whole.
    ToolCalls(&'a [ToolCall]),
    /// The choice finished.
    Finish(ChoiceEnd),
}

/// A finished choice of a non-streamed response.
#[derive(Debug, Clone)]
pub struct FinishedChoice {
    /// The choice's text.
    pub text: String,
    /// Why it ended.
    pub finish_reason: ChoiceEnd,
    /// Each token's log probabilities, when asked for.
    pub logprobs: Option<Vec<Logprobs>>,
    /// The calls the answer makes (its text is then not content).
    pub tool_calls: Option<Vec<ToolCall>>,
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
            "choices": choices,
        })
    }

    /// A stream chunk for one choice event, to be serialised (into the stream's buffer);
    /// `None` when the endpoint sends nothing for it. With `include_usage`, every chunk carries
    /// `"usage": null`, as OpenAI sends them. Made of borrowed fields (one per token: no JSON
    /// tree, no key strings allocated).
    pub fn chunk<'a>(
        &'a self,
        index: usize,
        event: ChoiceEvent<'a>,
        include_usage: bool,
    ) -> Option<impl Serialize + 'a> {
        use ChoiceEvent::{Finish, Start, Text, ToolCalls};
        // Chat chunks carry a `delta`, text-completion chunks a `text`.
        let (delta, text, finish_reason) = match (self.endpoint, event) {
            (Endpoint::Chat, Start) => (Some(Delta::opening()), None, None),
            (Endpoint::Chat, Text(piece)) => (Some(Delta::text(piece.text)), None, None),
            (Endpoint::Chat, ToolCalls(calls)) => (Some(Delta::calls(calls)), None, None),
            (Endpoint::Chat, Finish(reason)) => (Some(Delta::default()), None, Some(reason)),
            // Text completions have no opening chunk, and no tools.
            (Endpoint::Completions, Start | ToolCalls(_)) => return None,
            (Endpoint::Completions, Text(piece)) => (None, Some(piece.text), None),
            (Endpoint::Completions, Finish(reason)) => (None, Some(""), Some(reason)),
        };
        let logprobs = match event {
            Text(piece) if !piece.logprobs.is_empty() => {
                Some(self.logprobs_json(piece.logprobs, piece.offset))
            }
            _ => None,
        };
        let choice = ChunkChoice {
            index,
            delta,
            text,
            logprobs,
            finish_reason: finish_reason.map(ChoiceEnd::as_str),
        };
        let usage = include_usage.then_some(None);
        Some(self.chunk_envelope([choice], usage))
    }

    /// The last chunk of a stream with `include_usage`: no choices, the total usage.
    pub fn usage_chunk(&self, usage: UsageBody) -> impl Serialize + '_ {
        self.chunk_envelope::<[ChunkChoice; 0]>([], Some(Some(usage)))
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
            choices,
            usage,
        }
    }

    /// A whole (non-streamed) response.
    pub fn response(&self, choices: &[FinishedChoice], usage: UsageBody) -> Value {
        let choices = choices
            .iter()
            .enumerate()
            .map(|(index, c)| {
                let logprobs = match &c.logprobs {
                    Some(logprobs) => self.logprobs_json(logprobs, 0),
                    None => Value::Null,
                };
                match self.endpoint {
                    Endpoint::Chat => {
                        // `refusal` is required (null: the gateway's models never refuse
                        // in OpenAI's structured sense).
                        let mut message =
                            json!({"role": "assistant", "content": c.text, "refusal": null});
                        if let Some(calls) = &c.tool_calls {
                            message["content"] = Value::Null;
                            message["tool_calls"] =
                                calls.iter().map(|call| call.to_json(None)).collect();
                        }
                        json!({
                            "index": index,
                            "message": message,
                            "logprobs": logprobs,
                            "finish_reason": c.finish_reason.as_str(),
                        })
                    }
                    Endpoint::Completions => json!({
                        "index": index, "text": c.text, "logprobs": logprobs,
                        "finish_reason": c.finish_reason.as_str(),
                    }),
                }
            })
            .collect();
        let mut body = self.envelope(choices);
        body["usage"] = json!(usage);
        body
    }

    /// Log probabilities in the endpoint's shape: chat's `{"content": [{token, logprob,
    /// bytes, top_logprobs}]}`, or the completions endpoint's `{tokens, token_logprobs,
    /// top_logprobs, text_offset}` (`offset`: where the first token starts in the text).
    fn logprobs_json(&self, logprobs: &[Logprobs], offset: usize) -> Value {
        match self.endpoint {
            Endpoint::Chat => {
                let entry = |t: &TokenLogprob| json!({"token": t.token, "logprob": t.logprob, "bytes": t.bytes});
                let content: Vec<Value> = logprobs
                    .iter()
                    .map(|l| {
                        let mut e = entry(&l.sampled);
                        e["top_logprobs"] = l.top.iter().map(entry).collect();
                        e
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Endpoint::Completions => {
                let mut at = offset;
                let text_offset: Vec<usize> = logprobs
                    .iter()
                    .map(|l| {
                        let start = at;
                        at += l.sampled.bytes.len();
                        start
                    })
                    .collect();
                json!({
                    "tokens": logprobs.iter().map(|l| &l.sampled.token).collect::<Vec<_>>(),
                    "token_logprobs": logprobs.iter().map(|l| l.sampled.logprob).collect::<Vec<_>>(),
                    "top_logprobs": logprobs.iter().map(|l| {
                        l.top.iter().map(|t| (t.token.clone(), json!(t.logprob))).collect::<serde_json::Map<_, _>>()
                    }).collect::<Vec<_>>(),
                    "text_offset": text_offset,
                })
            }
        }
    }
}

/// A streamed chunk, in OpenAI's field order.
#[derive(Serialize)]
struct ChunkEnvelope<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
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
    logprobs: Option<Value>,
    finish_reason: Option<&'static str>,
}

/// What a chat chunk adds to the message: the role once, then text or tool calls.
#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Value>,
}

impl<'a> Delta<'a> {
    fn opening() -> Self {
        Delta {
            role: Some("assistant"),
            content: Some(""),
            tool_calls: None,
        }
    }

    fn text(text: &'a str) -> Self {
        Delta {
            content: Some(text),
            ..Delta::default()
        }
    }

    /// Whole calls in one delta: each with its index, id, name and all its arguments.
    fn calls(calls: &[ToolCall]) -> Self {
        Delta {
            tool_calls: Some(
                calls
                    .iter()
                    .enumerate()
                    .map(|(i, call)| call.to_json(Some(i)))
                    .collect(),
            ),
            ..Delta::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk as its client reads it.
    fn parse(chunk: impl Serialize) -> Value {
        serde_json::from_slice(&serde_json::to_vec(&chunk).unwrap()).unwrap()
    }

    fn text(text: &str) -> ChoiceEvent<'_> {
        ChoiceEvent::Text(TextPiece {
            text,
            logprobs: &[],
            offset: 0,
        })
    }

    fn logprob(token: &str, logprob: f32) -> TokenLogprob {
        TokenLogprob {
            token: token.into(),
            bytes: token.as_bytes().to_vec(),
            logprob,
        }
    }

    #[test]
    fn logprobs_and_tool_calls_in_openais_shapes() {
        let lp = vec![
            Logprobs {
                sampled: logprob("Hi", -0.5),
                top: vec![logprob("Hi", -0.5), logprob("Yo", -1.5)],
            },
            Logprobs {
                sampled: logprob("!", -0.1),
                top: vec![logprob("!", -0.1), logprob(".", -2.5)],
            },
        ];
        let chat = ResponseMeta::new(Endpoint::Chat, "m");
        let piece = TextPiece {
            text: "!",
            logprobs: &lp[1..],
            offset: 2,
        };
        let chunk = parse(chat.chunk(0, ChoiceEvent::Text(piece), false).unwrap());
        let entry = &chunk["choices"][0]["logprobs"]["content"][0];
        assert_eq!(entry["token"], "!");
        assert_eq!(entry["bytes"], json!([33]));
        assert_eq!(entry["top_logprobs"][1]["token"], ".");
        let text = ResponseMeta::new(Endpoint::Completions, "m");
        let choice = FinishedChoice {
            text: "Hi!".into(),
            finish_reason: ChoiceEnd::Engine(FinishReason::Stop),
            logprobs: Some(lp.clone()),
            tool_calls: None,
        };
        let body = text.response(std::slice::from_ref(&choice), UsageBody::default());
        let logprobs = &body["choices"][0]["logprobs"];
        assert_eq!(logprobs["tokens"], json!(["Hi", "!"]));
        assert_eq!(logprobs["text_offset"], json!([0, 2]));
        assert_eq!(logprobs["top_logprobs"][0]["Yo"], json!(-1.5));
        let call = ToolCall {
            id: "call_1".into(),
            name: "f".into(),
            arguments: "{}".into(),
        };
        let chunk = parse(
            chat.chunk(
                0,
                ChoiceEvent::ToolCalls(std::slice::from_ref(&call)),
                false,
            )
            .unwrap(),
        );
        let delta = &chunk["choices"][0]["delta"];
        assert_eq!(delta["tool_calls"][0]["index"], 0);
        assert_eq!(delta["tool_calls"][0]["function"]["name"], "f");
        assert!(delta.get("content").is_none());
        let end = parse(
            chat.chunk(0, ChoiceEvent::Finish(ChoiceEnd::ToolCalls), false)
                .unwrap(),
        );
        assert_eq!(end["choices"][0]["finish_reason"], "tool_calls");
        let body = chat.response(
            &[FinishedChoice {
                tool_calls: Some(vec![call]),
                finish_reason: ChoiceEnd::ToolCalls,
                ..choice
            }],
            UsageBody::default(),
        );
        let message = &body["choices"][0]["message"];
        assert!(message["content"].is_null());
        assert_eq!(message["tool_calls"][0]["id"], "call_1");
        assert_eq!(body["choices"][0]["logprobs"]["content"][1]["token"], "!");
    }

    #[test]
    fn chat_chunks_follow_openai() {
        let meta = ResponseMeta::new(Endpoint::Chat, "m");
        assert!(meta.id.starts_with("chatcmpl-"));
        let start = parse(meta.chunk(0, ChoiceEvent::Start, false).unwrap());
        assert_eq!(start["id"], meta.id.as_str());
        assert_eq!(start["model"], "m");
        assert!(
            start.get("system_fingerprint").is_none(),
            "a string or nothing"
        );
        assert_eq!(start["choices"][0]["delta"]["content"], "");
        assert_eq!(start["object"], "chat.completion.chunk");
        assert_eq!(start["choices"][0]["delta"]["role"], "assistant");
        assert!(start.get("usage").is_none());
        let text = parse(meta.chunk(0, text("hi"), true).unwrap());
        assert!(text["choices"][0]["delta"].get("role").is_none());
        assert!(
            text["choices"][0].get("text").is_none(),
            "chat chunks have no `text`"
        );
        assert_eq!(text["choices"][0]["delta"]["content"], "hi");
        assert!(text["usage"].is_null() && text.get("usage").is_some());
        let end = parse(
            meta.chunk(
                0,
                ChoiceEvent::Finish(ChoiceEnd::Engine(FinishReason::Length)),
                false,
            )
            .unwrap(),
        );
        assert_eq!(end["choices"][0]["finish_reason"], "length");
        assert_eq!(end["choices"][0]["delta"], json!({}));
        assert!(text["choices"][0]["finish_reason"].is_null());
        let mut usage = UsageBody::default();
        usage.add(Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            cached_tokens: 0,
            prompt_estimated: false,
        });
        let last = parse(meta.usage_chunk(usage));
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 7);
    }

    #[test]
    fn completion_response_follows_openai() {
        let meta = ResponseMeta::new(Endpoint::Completions, "m");
        assert!(meta.chunk(0, ChoiceEvent::Start, false).is_none());
        let token = parse(meta.chunk(1, text("a"), false).unwrap());
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
            meta.chunk(
                1,
                ChoiceEvent::Finish(ChoiceEnd::Engine(FinishReason::Stop)),
                true,
            )
            .unwrap(),
        );
        assert_eq!(end["choices"][0]["text"], "");
        assert_eq!(end["choices"][0]["finish_reason"], "stop");
        assert!(end["usage"].is_null() && end.get("usage").is_some());
        let body = meta.response(
            &[FinishedChoice {
                text: "x".into(),
                finish_reason: ChoiceEnd::Engine(FinishReason::Stop),
                logprobs: None,
                tool_calls: None,
            }],
            UsageBody::default(),
        );
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["choices"][0]["text"], "x");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
    }
}

//! OpenAI's wire format as an upstream speaks it: the streamed request's body, the chunks of
//! its answer, and the message of an error body.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{json, Value};

use engine_api::OutputConstraint;
use engine_api::{FinishReason, GenerationRequest, Logprobs, Prompt, Refusal, TokenLogprob, Usage};

/// The body of a streamed request upstream, in the order OpenAI documents its fields. Written
/// from borrowed fields straight into the body's bytes (one per request: no JSON tree).
#[derive(Serialize)]
struct UpstreamBody<'a> {
    model: &'a str,
    max_tokens: usize,
    temperature: f64,
    top_p: f64,
    presence_penalty: f32,
    frequency_penalty: f32,
    stream: bool,
    stream_options: StreamOptions,
    // Extensions vLLM and the engine-worker understand; sent only when they matter, so strict
    // OpenAI servers are not handed unknown fields needlessly.
    #[serde(skip_serializing_if = "is_zero")]
    top_k: usize,
    #[serde(skip_serializing_if = "is_one")]
    repetition_penalty: f32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ignore_eos: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<LogprobsField>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<engine_api::ChatMessage>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<PromptField<'a>>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// `logprobs`: a switch on chat completions, a count on text completions.
#[derive(Serialize)]
#[serde(untagged)]
enum LogprobsField {
    Chat(bool),
    Text(usize),
}

/// A text completion's `prompt`: text or token ids.
#[derive(Serialize)]
#[serde(untagged)]
enum PromptField<'a> {
    Text(&'a str),
    Tokens(&'a [u32]),
}

fn is_one(v: &f32) -> bool {
    *v == 1.0
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The upstream endpoint (under `api_base`) and JSON body of a request for `upstream_model`.
pub(super) fn upstream_request(
    api_base: &str,
    upstream_model: &str,
    request: &GenerationRequest,
) -> (String, Vec<u8>) {
    let p = &request.params;
    let messages = request.prompt.plain_messages();
    let chat = messages.is_some();
    // Log probabilities in each endpoint's own terms.
    let (logprobs, top_logprobs) = match (p.logprobs, chat) {
        (None, _) => (None, None),
        (Some(k), true) => (Some(LogprobsField::Chat(true)), Some(k)),
        (Some(k), false) => (Some(LogprobsField::Text(k)), None),
    };
    // Structured output as OpenAI's `response_format`, on both endpoints (vLLM and the
    // engine-worker read it on text completions too).
    let response_format = p.constraint.as_ref().map(|c| match c.as_ref() {
        OutputConstraint::JsonObject => json!({"type": "json_object"}),
        OutputConstraint::JsonSchema(schema) => {
            json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": true}})
        }
    });
    // Conversations go up as plain messages, tools in the system message (the gateway reads
    // the calls back from the text, so no upstream tool parser is needed).
    let (path, prompt) = match &request.prompt {
        Prompt::Chat(_) | Prompt::ChatWithTools(..) => ("chat/completions", None),
        Prompt::Text(text) => ("completions", Some(PromptField::Text(text))),
        Prompt::Tokens(ids) => ("completions", Some(PromptField::Tokens(ids))),
    };
    let body = UpstreamBody {
        model: upstream_model,
        max_tokens: p.max_tokens,
        temperature: p.temperature,
        top_p: p.top_p,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        stream: true,
        stream_options: StreamOptions {
            include_usage: true,
        },
        top_k: p.top_k,
        repetition_penalty: p.repetition_penalty,
        ignore_eos: p.ignore_eos,
        seed: p.seed,
        stop: &p.stop,
        logprobs,
        top_logprobs,
        response_format,
        messages,
        prompt,
    };
    let mut bytes = Vec::with_capacity(512);
    serde_json::to_writer(&mut bytes, &body).expect("a request body serialises");
    (format!("{}/{path}", api_base), bytes)
}

/// What one streamed chunk carries.
#[derive(Debug, Default, PartialEq)]
pub struct Chunk {
    /// An error event's message (the stream ends with it).
    pub error: Option<String>,
    /// The request's usage (the last chunk, with `include_usage`).
    pub usage: Option<Usage>,
    /// One generated token's text, if the chunk is a token.
    pub token: Option<String>,
    /// The choice finished.
    pub finish_reason: Option<FinishReason>,
    /// The token's log probabilities, if the upstream sent them.
    pub logprobs: Option<Box<Logprobs>>,
}

/// A streamed chunk as the wire has it: only the fields read, strings borrowed from the
/// payload where they have no escapes (one parse per token, no JSON tree).
#[derive(serde::Deserialize)]
struct WireChunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<WireChoice<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(serde::Deserialize)]
struct WireChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<WireDelta<'a>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    logprobs: Option<Value>,
}

#[derive(serde::Deserialize)]
struct WireDelta<'a> {
    #[serde(default, borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
}

#[derive(serde::Deserialize)]
struct WirePromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

/// Reads one `data:` payload (not `[DONE]`) of a chat or text completion stream.
pub fn read_chunk(data: &str) -> Result<Chunk, serde_json::Error> {
    let chunk: WireChunk<'_> = serde_json::from_str(data)?;
    let mut out = Chunk::default();
    if let Some(error) = chunk.error {
        out.error = Some(error_message(error.to_string().as_bytes()));
        return Ok(out);
    }
    if let Some(u) = chunk.usage {
        out.usage = Some(Usage {
            prompt_tokens: u.prompt_tokens as usize,
            completion_tokens: u.completion_tokens as usize,
            cached_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0) as usize,
            prompt_estimated: false,
        });
    }
    let Some(choice) = chunk.choices.into_iter().next() else {
        return Ok(out);
    };
    let (role, content) = match choice.delta {
        Some(delta) => (delta.role, delta.content),
        None => (None, None),
    };
    let text = content.or(choice.text).unwrap_or_default();
    let reason = choice.finish_reason;
    // A chat stream opens with a role-only chunk; a finishing chunk may carry the last text
    // (vLLM) or none (the engine-worker). Every other chunk is one token.
    let opens = role.is_some() && text.is_empty();
    if !opens && (reason.is_none() || !text.is_empty()) {
        out.token = Some(text.into_owned());
    }
    if out.token.is_some() {
        out.logprobs = choice
            .logprobs
            .as_ref()
            .and_then(read_logprobs)
            .map(Box::new);
    }
    out.finish_reason = reason.map(|reason| match reason.as_ref() {
        "length" => FinishReason::Length,
        _ => FinishReason::Stop,
    });
    Ok(out)
}

/// A streamed chunk's log probabilities for its (one) token: chat's
/// `{"content": [{token, logprob, bytes, top_logprobs}]}`, or the completions endpoint's
/// `{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}]}`.
fn read_logprobs(value: &Value) -> Option<Logprobs> {
    let entry = |token: &str, logprob: &Value, bytes: Option<&Value>| TokenLogprob {
        token: token.to_string(),
        bytes: bytes
            .and_then(Value::as_array)
            .map(|b| {
                b.iter()
                    .filter_map(|x| x.as_u64().map(|x| x as u8))
                    .collect()
            })
            .unwrap_or_else(|| token.as_bytes().to_vec()),
        logprob: logprob.as_f64().unwrap_or(f64::NEG_INFINITY) as f32,
    };
    if let Some(first) = value.get("content").and_then(|c| c.get(0)) {
        let top = first["top_logprobs"]
            .as_array()
            .map(|tops| {
                tops.iter()
                    .map(|t| {
                        entry(
                            t["token"].as_str().unwrap_or(""),
                            &t["logprob"],
                            t.get("bytes"),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        return Some(Logprobs {
            sampled: entry(
                first["token"].as_str().unwrap_or(""),
                &first["logprob"],
                first.get("bytes"),
            ),
            top,
        });
    }
    let token = value.get("tokens")?.get(0)?.as_str()?;
    let mut top: Vec<TokenLogprob> = value["top_logprobs"]
        .get(0)
        .and_then(Value::as_object)
        .map(|tops| tops.iter().map(|(t, l)| entry(t, l, None)).collect())
        .unwrap_or_default();
    top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
    Some(Logprobs {
        sampled: entry(token, &value["token_logprobs"][0], None),
        top,
    })
}

/// Why an upstream's `/v1/embeddings` answer cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum UnreadableEmbeddings {
    /// Not JSON.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// No `data` list.
    #[error("no `data` list")]
    NoData,
    /// An entry whose `embedding` is not a list of numbers.
    #[error("data[{index}].embedding: {source}")]
    Vector {
        /// The entry.
        index: usize,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// The vectors (in input order) and usage of an upstream's `/v1/embeddings` answer.
pub fn read_embeddings(body: &[u8]) -> Result<super::RemoteEmbeddings, UnreadableEmbeddings> {
    let answer: Value = serde_json::from_slice(body)?;
    let data = answer["data"]
        .as_array()
        .ok_or(UnreadableEmbeddings::NoData)?;
    let mut vectors: Vec<(u64, Vec<f32>)> = data
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let vector = serde_json::from_value(item["embedding"].clone())
                .map_err(|source| UnreadableEmbeddings::Vector { index: i, source })?;
            Ok((item["index"].as_u64().unwrap_or(i as u64), vector))
        })
        .collect::<Result<_, UnreadableEmbeddings>>()?;
    vectors.sort_by_key(|(index, _)| *index);
    Ok(super::RemoteEmbeddings {
        vectors: vectors.into_iter().map(|(_, v)| v).collect(),
        prompt_tokens: answer["usage"]["prompt_tokens"]
            .as_u64()
            .map(|n| n as usize),
    })
}

/// The refusal an upstream's 4xx body states (its whole text as the message if it is not in
/// OpenAI's format).
pub fn refusal(body: &[u8]) -> Refusal {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.pointer(&format!("/error/{name}")))
            .and_then(Value::as_str)
            .map(|s| s.chars().take(100).collect())
    };
    Refusal {
        message: error_message(body),
        param: field("param"),
        code: field("code"),
    }
}

/// The `message` of an OpenAI error body, else the body itself (shortened).
pub fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
    });
    let text = match message {
        Some(m) => m.to_string(),
        None => String::from_utf8_lossy(body).into_owned(),
    };
    text.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_taken_from_openai_bodies() {
        let body = br#"{"error":{"message":"too long","type":"invalid_request_error"}}"#;
        assert_eq!(error_message(body), "too long");
        assert_eq!(error_message(b"plain"), "plain");
        let body = br#"{"error":{"message":"too long","type":"invalid_request_error","param":"max_tokens","code":"context_length_exceeded"}}"#;
        let refused = refusal(body);
        assert_eq!(refused.message, "too long");
        assert_eq!(refused.param.as_deref(), Some("max_tokens"));
        assert_eq!(refused.code.as_deref(), Some("context_length_exceeded"));
        assert_eq!(refusal(b"plain").param, None);
    }

    #[test]
    fn constraints_and_logprobs_travel_in_each_endpoints_terms() {
        let params = engine_api::SamplingParams {
            logprobs: Some(3),
            constraint: Some(std::sync::Arc::new(OutputConstraint::JsonSchema(
                json!({"type": "object"}),
            ))),
            ..engine_api::SamplingParams::greedy(4)
        };
        let tenant = policies::TenantId::new("t").unwrap();
        let chat = GenerationRequest::new(Prompt::Chat(vec![]), params.clone(), tenant.clone());
        let (url, body) = upstream_request("http://u/v1", "m", &chat);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(url, "http://u/v1/chat/completions");
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["messages"], json!([]));
        for absent in [
            "top_k",
            "repetition_penalty",
            "ignore_eos",
            "seed",
            "stop",
            "prompt",
        ] {
            assert!(body.get(absent).is_none(), "{absent} sent unasked");
        }
        assert_eq!(
            (body["logprobs"].clone(), body["top_logprobs"].clone()),
            (json!(true), json!(3))
        );
        assert_eq!(
            body["response_format"]["json_schema"]["schema"],
            json!({"type": "object"})
        );
        let text = GenerationRequest::new(Prompt::Text("x".into()), params, tenant);
        let (_, body) = upstream_request("http://u/v1", "m", &text);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["prompt"], "x");
        assert!(body.get("messages").is_none());
        assert_eq!(body["logprobs"], json!(3));
        assert!(body.get("top_logprobs").is_none());
        assert_eq!(body["response_format"]["type"], "json_schema");
    }

    #[test]
    fn logprobs_of_chat_and_text_chunks() {
        let chat = read_chunk(r#"{"choices":[{"delta":{"content":"Hi"},"logprobs":{"content":[{"token":"Hi","logprob":-0.25,"bytes":[72,105],"top_logprobs":[{"token":"Hi","logprob":-0.25,"bytes":[72,105]},{"token":"Yo","logprob":-2.0,"bytes":[89,111]}]}]}}]}"#).unwrap();
        let lp = chat.logprobs.unwrap();
        assert_eq!(
            (lp.sampled.token.as_str(), lp.sampled.logprob),
            ("Hi", -0.25)
        );
        assert_eq!(lp.top[1].bytes, b"Yo");
        let text = read_chunk(r#"{"choices":[{"text":" a","logprobs":{"tokens":[" a"],"token_logprobs":[-0.5],"top_logprobs":[{" b":-1.5," a":-0.5}],"text_offset":[0]}}]}"#).unwrap();
        let lp = text.logprobs.unwrap();
        assert_eq!(lp.sampled.logprob, -0.5);
        assert_eq!(lp.top[0].token, " a", "most likely first");
        assert!(read_chunk(r#"{"choices":[{"delta":{"content":"x"}}]}"#)
            .unwrap()
            .logprobs
            .is_none());
    }

    #[test]
    fn chunks_of_chat_and_text_streams() {
        let opening = read_chunk(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#);
        assert_eq!(opening.unwrap(), Chunk::default());
        let token = read_chunk(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#).unwrap();
        assert_eq!(token.token.as_deref(), Some("Hi"));
        let last = read_chunk(r#"{"choices":[{"text":"","finish_reason":"length"}]}"#).unwrap();
        assert_eq!(
            (last.token, last.finish_reason),
            (None, Some(FinishReason::Length))
        );
        let last_with_text =
            read_chunk(r#"{"choices":[{"text":"!","finish_reason":"stop"}]}"#).unwrap();
        assert_eq!(last_with_text.token.as_deref(), Some("!"));
        let usage =
            read_chunk(r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3}}"#)
                .unwrap();
        assert_eq!(usage.usage.map(|u| u.prompt_tokens), Some(12));
        let error = read_chunk(r#"{"error":{"message":"boom"}}"#).unwrap();
        assert_eq!(error.error.as_deref(), Some("boom"));
        assert!(read_chunk("not json").is_err());
    }
}

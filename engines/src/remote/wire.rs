//! OpenAI's wire format as an upstream speaks it: the streamed request's body, the chunks of
//! its answer, and the message of an error body.

use serde_json::{json, Value};

use crate::engine::{FinishReason, GenerationRequest, Prompt, Refusal, Usage};

/// The upstream endpoint (under `api_base`) and JSON body of a request for `upstream_model`.
pub(super) fn upstream_request(
    api_base: &str,
    upstream_model: &str,
    request: &GenerationRequest,
) -> (String, Value) {
    let p = &request.params;
    let mut body = json!({
        "model": upstream_model,
        "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    // Extensions vLLM and the engine-worker understand; sent only when they matter, so
    // strict OpenAI servers are not handed unknown fields needlessly.
    if p.top_k > 0 {
        body["top_k"] = json!(p.top_k);
    }
    if p.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    if let Some(seed) = p.seed {
        body["seed"] = json!(seed);
    }
    if !p.stop.is_empty() {
        body["stop"] = json!(p.stop);
    }
    let path = match &request.prompt {
        Prompt::Chat(messages) => {
            body["messages"] = json!(messages);
            "chat/completions"
        }
        Prompt::Text(text) => {
            body["prompt"] = json!(text);
            "completions"
        }
        Prompt::Tokens(ids) => {
            body["prompt"] = json!(ids);
            "completions"
        }
    };
    (format!("{}/{path}", api_base), body)
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
}

/// Reads one `data:` payload (not `[DONE]`) of a chat or text completion stream.
pub fn read_chunk(data: &str) -> Result<Chunk, serde_json::Error> {
    let chunk: Value = serde_json::from_str(data)?;
    let mut out = Chunk::default();
    if let Some(error) = chunk.get("error") {
        out.error = Some(error_message(error.to_string().as_bytes()));
        return Ok(out);
    }
    if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
        out.usage = Some(Usage {
            prompt_tokens: u["prompt_tokens"].as_u64().unwrap_or(0) as usize,
            completion_tokens: u["completion_tokens"].as_u64().unwrap_or(0) as usize,
        });
    }
    let Some(choice) = chunk["choices"].get(0) else {
        return Ok(out);
    };
    let text = choice["delta"]["content"]
        .as_str()
        .or_else(|| choice["text"].as_str())
        .unwrap_or("");
    let reason = choice["finish_reason"].as_str();
    // A chat stream opens with a role-only chunk; a finishing chunk may carry the last text
    // (vLLM) or none (the engine-worker). Every other chunk is one token.
    let opens = choice["delta"].get("role").is_some() && text.is_empty();
    if !opens && (reason.is_none() || !text.is_empty()) {
        out.token = Some(text.to_string());
    }
    out.finish_reason = reason.map(|reason| match reason {
        "length" => FinishReason::Length,
        _ => FinishReason::Stop,
    });
    Ok(out)
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

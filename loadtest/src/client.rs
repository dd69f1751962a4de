//! One request against an OpenAI-compatible endpoint, measured as the client sees it. TTFT is
//! the first token chunk, ITL the gaps between token chunks.

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::prompts::Message;
use crate::report::{Outcome, RequestRecord};
use crate::scenario::{Endpoint, Scenario};

/// A request never outlives this (the run must end by itself).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// One request to send.
pub struct Request<'a> {
    /// The scenario's tenant label.
    pub tenant: &'a str,
    /// Its API key.
    pub api_key: &'a str,
    /// The model it names.
    pub model: &'a str,
    /// Fields added to the body over the harness's own.
    pub extra_body: &'a serde_json::Map<String, Value>,
    /// The prompt: chat messages (the completions endpoint gets their texts, joined).
    pub prompt: Vec<Message>,
    /// `max_tokens`.
    pub max_tokens: u64,
    /// When it was sent, from the start of the run.
    pub sent_at: Duration,
}

fn body(scenario: &Scenario, r: &Request<'_>) -> Value {
    let mut body = match scenario.endpoint {
        Endpoint::Chat => {
            let messages: Vec<Value> = r
                .prompt
                .iter()
                .map(|m| json!({"role": m.role, "content": m.content}))
                .collect();
            json!({ "messages": messages })
        }
        Endpoint::Completions => {
            let texts: Vec<&str> = r.prompt.iter().map(|m| m.content.as_str()).collect();
            json!({"prompt": texts.join("\n\n")})
        }
    };
    body["model"] = json!(r.model);
    body["max_tokens"] = json!(r.max_tokens);
    body["stream"] = json!(scenario.stream);
    if scenario.stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    if scenario.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    if let Some(temperature) = scenario.temperature {
        body["temperature"] = json!(temperature);
    }
    for (name, value) in r.extra_body {
        body[name] = value.clone();
    }
    body
}

fn path(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Chat => "/v1/chat/completions",
        Endpoint::Completions => "/v1/completions",
    }
}

/// Does this streamed choice carry a generated token? Servers send one chunk per token (its
/// text possibly empty); the chat role announcement and the final chunk with a finish reason
/// carry none.
fn is_token_chunk(choice: &Value) -> bool {
    if !choice["finish_reason"].is_null() {
        return false;
    }
    let delta = &choice["delta"];
    (delta.get("content").is_some_and(Value::is_string) && delta.get("role").is_none())
        || choice.get("text").is_some_and(Value::is_string)
}

/// A transport error with every cause (reqwest's own message is only the outermost).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The server's error message: OpenAI's `error.message`, else the start of the body.
fn server_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string());
    let mut message: String = message.chars().take(200).collect();
    if message.is_empty() {
        message = "(empty body)".into();
    }
    message
}

/// The generated text of one choice of a response (chunk or whole).
fn choice_text(choice: &Value) -> Option<&str> {
    choice["delta"]["content"]
        .as_str()
        .or_else(|| choice["message"]["content"].as_str())
        .or_else(|| choice["text"].as_str())
}

/// Sends one request and returns its record and the answer's text (of its first choice;
/// empty if it failed). `progress_tokens`, when given, counts token chunks as they arrive.
pub async fn send(
    client: &reqwest::Client,
    base_url: &str,
    scenario: &Scenario,
    r: Request<'_>,
    progress_tokens: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
) -> (RequestRecord, String) {
    let mut answer = String::new();
    let record = send_into(client, base_url, scenario, r, progress_tokens, &mut answer).await;
    if record.outcome != Outcome::Ok {
        answer.clear();
    }
    (record, answer)
}

async fn send_into(
    client: &reqwest::Client,
    base_url: &str,
    scenario: &Scenario,
    r: Request<'_>,
    progress_tokens: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    answer: &mut String,
) -> RequestRecord {
    let started = Instant::now();
    let mut record = RequestRecord {
        tenant: r.tenant.to_string(),
        outcome: Outcome::Transport,
        status: None,
        sent_at_ms: r.sent_at.as_secs_f64() * 1000.0,
        ttft_ms: None,
        itl_ms: Vec::new(),
        e2el_ms: 0.0,
        prompt_tokens: 0,
        output_tokens: 0,
        cached_tokens: 0,
        error: None,
    };
    let url = format!(
        "{}{}",
        base_url.trim_end_matches('/'),
        path(scenario.endpoint)
    );
    let response = client
        .post(url)
        .bearer_auth(r.api_key)
        .json(&body(scenario, &r))
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let response = match response {
        Ok(response) => response,
        Err(e) => {
            record.error = Some(error_chain(&e));
            record.e2el_ms = ms(started.elapsed());
            return record;
        }
    };
    let status = response.status().as_u16();
    record.status = Some(status);
    record.outcome = match status {
        200..=299 => Outcome::Ok,
        429 => Outcome::RateLimited,
        400..=499 => Outcome::ClientError,
        _ => Outcome::ServerError,
    };
    if record.outcome != Outcome::Ok {
        let body = response.bytes().await.unwrap_or_default();
        record.error = Some(format!("HTTP {status}: {}", server_message(&body)));
        record.e2el_ms = ms(started.elapsed());
        return record;
    }
    let mut usage: Option<Value> = None;
    let mut chunks = 0u64;
    if scenario.stream {
        // eventsource-stream parses SSE as the specification says (LF, CRLF or CR line ends,
        // multi-line data, comments).
        let mut events = response.bytes_stream().eventsource();
        let mut last_token: Option<Instant> = None;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    record.outcome = Outcome::Transport;
                    record.error = Some(format!("stream broke: {e}"));
                    break;
                }
            };
            let data = event.data.trim();
            if data == "[DONE]" {
                break;
            }
            let Ok(value) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(error) = value.get("error") {
                record.outcome = Outcome::ServerError;
                record.error = Some(format!(
                    "error event: {}",
                    error["message"].as_str().unwrap_or("(no message)")
                ));
            }
            if value["usage"].is_object() {
                usage = Some(value["usage"].clone());
            }
            if let Some(text) = value["choices"].get(0).and_then(choice_text) {
                answer.push_str(text);
            }
            if value["choices"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(is_token_chunk))
            {
                let now = Instant::now();
                match last_token {
                    None => record.ttft_ms = Some(ms(now - started)),
                    Some(prev) => record.itl_ms.push(ms(now - prev)),
                }
                last_token = Some(now);
                chunks += 1;
                if let Some(tokens) = &progress_tokens {
                    tokens.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    } else {
        match response.json::<Value>().await {
            Ok(value) => {
                usage = value.get("usage").cloned();
                if let Some(text) = value["choices"].get(0).and_then(choice_text) {
                    answer.push_str(text);
                }
                chunks = u64::from(value["choices"].as_array().is_some_and(|c| !c.is_empty()));
            }
            Err(e) => {
                record.outcome = Outcome::Transport;
                record.error = Some(format!("unreadable body: {}", error_chain(&e)));
            }
        }
    }
    record.e2el_ms = ms(started.elapsed());
    // The server's counts, else what the stream showed.
    record.output_tokens = usage
        .as_ref()
        .and_then(|u| u["completion_tokens"].as_u64())
        .unwrap_or(chunks);
    record.prompt_tokens = usage
        .as_ref()
        .and_then(|u| u["prompt_tokens"].as_u64())
        .unwrap_or(0);
    record.cached_tokens = usage
        .as_ref()
        .and_then(|u| u["prompt_tokens_details"]["cached_tokens"].as_u64())
        .unwrap_or(0);
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves `response` to one connection after reading the whole request.
    async fn serve_once(response: String) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            socket.write_all(response.as_bytes()).await.unwrap();
            let _ = socket.shutdown().await;
        });
        format!("http://{addr}")
    }

    #[test]
    fn the_tenants_model_and_extra_body_are_in_the_body() {
        let scenario: Scenario = toml::from_str(
            r#"
            model = "base"
            stop = { requests = 1 }
            [[tenants]]
            label = "t"
            api_key = "k"
            arrival = { kind = "closed_loop", concurrency = 1 }
            prompts = { kind = "synthetic", tokens = 2 }
            max_tokens = 3
            "#,
        )
        .unwrap();
        let extra = json!({"lora": [{"id": 1, "scale": 1.0}], "max_tokens": 9});
        let request = Request {
            tenant: "t",
            api_key: "k",
            model: "base:radiology",
            extra_body: extra.as_object().unwrap(),
            prompt: vec![Message {
                role: "user",
                content: "hi".into(),
            }],
            max_tokens: 3,
            sent_at: Duration::ZERO,
        };
        let body = body(&scenario, &request);
        assert_eq!(body["model"], "base:radiology");
        assert_eq!(body["lora"], json!([{"id": 1, "scale": 1.0}]));
        assert_eq!(
            body["max_tokens"], 9,
            "extra_body wins, as the OpenAI SDK's does"
        );
    }

    #[tokio::test]
    async fn a_crlf_framed_stream_is_read_token_by_token() {
        let chunk = |text: &str| {
            format!(
                "data: {}\r\n\r\n",
                json!({"choices": [{"index": 0, "text": text, "finish_reason": null}]})
            )
        };
        let mut body = String::new();
        for word in ["a", "b", "c"] {
            body += &chunk(word);
        }
        body += &format!(
            "data: {}\r\n\r\ndata: [DONE]\r\n\r\n",
            json!({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}})
        );
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}"
        );
        let url = serve_once(response).await;
        let scenario: Scenario = toml::from_str(
            r#"
            model = "m"
            endpoint = "completions"
            stop = { requests = 1 }
            [[tenants]]
            label = "t"
            api_key = "k"
            arrival = { kind = "closed_loop", concurrency = 1 }
            prompts = { kind = "synthetic", tokens = 2 }
            max_tokens = 3
            "#,
        )
        .unwrap();
        let request = Request {
            tenant: "t",
            api_key: "k",
            model: "m",
            extra_body: &Default::default(),
            prompt: vec![Message {
                role: "user",
                content: "hi".into(),
            }],
            max_tokens: 3,
            sent_at: Duration::ZERO,
        };
        let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (record, answer) = send(
            &reqwest::Client::new(),
            &url,
            &scenario,
            request,
            Some(counted.clone()),
        )
        .await;
        assert_eq!(answer, "abc");
        assert_eq!(record.outcome, Outcome::Ok, "{record:?}");
        assert_eq!((record.prompt_tokens, record.output_tokens), (4, 3));
        assert!(record.ttft_ms.is_some());
        assert_eq!(record.itl_ms.len(), 2, "three token chunks: two gaps");
        assert_eq!(counted.load(std::sync::atomic::Ordering::Relaxed), 3);
    }
}

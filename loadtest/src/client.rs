//! One request against an OpenAI-compatible endpoint, measured as the client sees it. TTFT is
//! the first token chunk, ITL the gaps between token chunks.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::report::{Outcome, RequestRecord};
use crate::scenario::{Endpoint, Scenario};

/// A request never outlives this (the run must end by itself).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Request<'a> {
    pub tenant: &'a str,
    pub api_key: &'a str,
    pub prompt: String,
    pub max_tokens: u64,
    /// When it was sent, from the start of the run.
    pub sent_at: Duration,
}

fn body(scenario: &Scenario, r: &Request<'_>) -> Value {
    let mut body = match scenario.endpoint {
        Endpoint::Chat => json!({"messages": [{"role": "user", "content": r.prompt}]}),
        Endpoint::Completions => json!({"prompt": r.prompt}),
    };
    body["model"] = json!(scenario.model);
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

pub async fn send(
    client: &reqwest::Client,
    base_url: &str,
    scenario: &Scenario,
    r: Request<'_>,
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
        Err(_) => {
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
        let _ = response.bytes().await;
        record.e2el_ms = ms(started.elapsed());
        return record;
    }
    let mut usage: Option<Value> = None;
    let mut chunks = 0u64;
    if scenario.stream {
        let mut body = response.bytes_stream();
        let mut buffer = Vec::new();
        let mut last_token: Option<Instant> = None;
        'read: while let Some(piece) = body.next().await {
            let Ok(piece) = piece else {
                record.outcome = Outcome::Transport;
                break;
            };
            buffer.extend_from_slice(&piece);
            // Server-sent events end with a blank line.
            while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                let Some(data) = text.trim().strip_prefix("data:").map(str::trim) else {
                    continue;
                };
                if data == "[DONE]" {
                    break 'read;
                }
                let Ok(value) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                if value.get("error").is_some() {
                    record.outcome = Outcome::ServerError;
                }
                if value["usage"].is_object() {
                    usage = Some(value["usage"].clone());
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
                }
            }
        }
    } else {
        match response.json::<Value>().await {
            Ok(value) => {
                usage = value.get("usage").cloned();
                chunks = u64::from(value["choices"].as_array().is_some_and(|c| !c.is_empty()));
            }
            Err(_) => record.outcome = Outcome::Transport,
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
    record
}

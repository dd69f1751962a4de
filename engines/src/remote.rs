//! An engine on another machine: any OpenAI-compatible server (an `engine-worker`, vLLM, an NPU
//! vendor's server), reached over a pooled HTTP/1.1 client.
//!
//! Every request goes upstream as a stream (`stream: true` with `include_usage`), whatever the
//! client asked for: tokens then arrive as they are generated, a client that hangs up closes the
//! upstream connection (the upstream frees the sequence), and the usage the upstream reports is
//! what gets billed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::engine::{
    Completion, Engine, EngineCounters, FinishReason, GenerationRequest, ModelInfo, PreparedPrompt,
    Prompt, RequestTiming, TokenEvent, TokenStream, Usage, REMOTE_TOKEN_ID,
};
use crate::error::{EngineError, Result};

/// A connection pool shared by every remote replica (cheap to clone).
#[derive(Clone, Debug)]
pub struct RemoteClient {
    http: Client<HttpConnector, Full<Bytes>>,
}

impl RemoteClient {
    /// `connect_timeout` bounds each TCP connect; idle connections are kept for reuse.
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        // Tokens are small writes; do not let Nagle hold them back (as on the gateway's side).
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Self { http }
    }
}

/// Where and how to reach one upstream replica.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// The server's OpenAI base URL (`http://host:port` or `http://host:port/v1`). Plain HTTP
    /// only: upstreams live on the centre's internal network.
    pub base_url: String,
    /// The model id the upstream serves (often the same as the gateway's).
    pub upstream_model: String,
    /// Sent as `Authorization: Bearer ...` (an `engine-worker`'s shared secret).
    pub api_key: Option<String>,
    /// The model's context window, for the gateway's default `max_tokens`.
    pub context_length: usize,
    /// Time allowed until the upstream's response headers.
    pub response_timeout: Duration,
    /// Time allowed between two chunks of a stream.
    pub idle_timeout: Duration,
}

/// Load as an `engine-worker` reports it at `GET /load`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedLoad {
    pub model: String,
    /// Sequences in the running batch.
    pub running: u64,
    /// Sequences waiting for admission.
    pub waiting: u64,
    /// Prompt plus `max_tokens` not yet generated, over the requests in flight.
    pub outstanding_tokens: u64,
    pub kv_blocks_free: u64,
    pub kv_blocks_total: u64,
}

/// The body of `GET /load`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    pub models: Vec<ReportedLoad>,
}

/// One upstream replica of one model.
pub struct RemoteEngine {
    info: ModelInfo,
    options: RemoteOptions,
    /// `<base>/v1`, without a trailing slash.
    api_base: String,
    client: RemoteClient,
    counters: std::sync::Arc<EngineCounters>,
    runtime: tokio::runtime::Handle,
    next_id: AtomicU64,
}

impl std::fmt::Debug for RemoteEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEngine")
            .field("model", &self.info.id)
            .field("base_url", &self.options.base_url)
            .finish_non_exhaustive()
    }
}

impl RemoteEngine {
    /// A replica of `model_id` at `options.base_url`; requests run on `runtime`.
    pub fn new(
        model_id: &str,
        options: RemoteOptions,
        client: RemoteClient,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self> {
        let api_base = api_base(&options.base_url)?;
        Ok(Self {
            info: ModelInfo {
                id: model_id.to_string(),
                context_length: options.context_length,
                // Unknown upstream; only local engines check ids against it.
                vocab_size: 0,
            },
            options,
            api_base,
            client,
            counters: Default::default(),
            runtime,
            next_id: AtomicU64::new(0),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.options.base_url
    }

    /// A health check: `GET /load` of an `engine-worker` (with its load for this model), else
    /// `GET /v1/models` of any OpenAI-compatible server (healthy, load unknown).
    pub async fn probe(
        &self,
        timeout: Duration,
    ) -> std::result::Result<Option<ReportedLoad>, String> {
        let root = self.api_base.trim_end_matches("/v1");
        let (status, body) = self.get(&format!("{root}/load"), timeout).await?;
        if status == StatusCode::OK {
            let report: LoadReport = serde_json::from_slice(&body)
                .map_err(|e| format!("unreadable load report: {e}"))?;
            let load = report
                .models
                .into_iter()
                .find(|m| m.model == self.options.upstream_model);
            return load.map(Some).ok_or_else(|| {
                format!(
                    "the worker does not serve `{}`",
                    self.options.upstream_model
                )
            });
        }
        let (status, _) = self
            .get(&format!("{}/models", self.api_base), timeout)
            .await?;
        if status.is_success() {
            Ok(None)
        } else {
            Err(format!("health check answered {status}"))
        }
    }

    async fn get(
        &self,
        url: &str,
        timeout: Duration,
    ) -> std::result::Result<(StatusCode, Bytes), String> {
        let request = self
            .request_builder(Method::GET, url)?
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self.client.http.request(request).await.map_err(describe)?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(describe)?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }

    fn request_builder(
        &self,
        method: Method,
        url: &str,
    ) -> std::result::Result<http::request::Builder, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("bad upstream URL `{url}`: {e}"))?;
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(key) = &self.options.api_key {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        Ok(builder)
    }

    /// The upstream endpoint and JSON body of a request.
    fn upstream_request(&self, request: &GenerationRequest) -> (String, Value) {
        let p = &request.params;
        let mut body = json!({
            "model": self.options.upstream_model,
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
        (format!("{}/{path}", self.api_base), body)
    }
}

/// `http://host:port[/prefix][/v1]` → `http://host:port[/prefix]/v1`.
fn api_base(base_url: &str) -> Result<String> {
    let trimmed = base_url.trim_end_matches('/');
    let uri: Uri = trimmed
        .parse()
        .map_err(|e| EngineError::Load(format!("bad upstream URL `{base_url}`: {e}")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(EngineError::Load(format!(
            "upstream URL `{base_url}` must be http://host:port (plain HTTP on the internal network)"
        )));
    }
    Ok(match trimmed.ends_with("/v1") {
        true => trimmed.to_string(),
        false => format!("{trimmed}/v1"),
    })
}

/// An error and its causes on one line (hyper's top-level messages are terse).
fn describe(err: impl std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Rough prompt size for admission when the upstream does the tokenising: four bytes per token,
/// plus four tokens of template framing per chat message (English text with BPE tokenizers comes
/// out close; the upstream's reported usage is what gets billed).
pub fn estimate_prompt_tokens(prompt: &Prompt) -> usize {
    let bytes_to_tokens = |s: &str| s.len().div_ceil(4);
    match prompt {
        Prompt::Tokens(ids) => ids.len(),
        Prompt::Text(text) => bytes_to_tokens(text),
        Prompt::Chat(messages) => messages
            .iter()
            .map(|m| 4 + bytes_to_tokens(&m.content))
            .sum(),
    }
}

impl Engine for RemoteEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn submit(&self, request: GenerationRequest) -> Result<TokenStream> {
        let estimate = estimate_prompt_tokens(&request.prompt);
        if estimate == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        let (url, body) = self.upstream_request(&request);
        let mut builder = self
            .request_builder(Method::POST, &url)
            .map_err(EngineError::Load)?
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "text/event-stream");
        if let Some(traceparent) = &request.traceparent {
            builder = builder.header("traceparent", traceparent);
        }
        let http_request = builder
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| EngineError::Load(e.to_string()))?;
        let (events, receiver) = mpsc::unbounded_channel();
        let call = UpstreamCall {
            client: self.client.clone(),
            options: self.options.clone(),
            counters: self.counters.clone(),
            events,
            prompt_estimate: estimate,
        };
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        self.counters.active.fetch_add(1, Ordering::Relaxed);
        self.runtime.spawn(call.run(http_request));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(TokenStream::new(id, estimate, receiver))
    }

    fn prepare_prompt(&self, prompt: &Prompt) -> Result<PreparedPrompt> {
        Ok(PreparedPrompt {
            tokens: estimate_prompt_tokens(prompt),
            prompt: prompt.clone(),
            estimated: true,
        })
    }

    fn counters(&self) -> &EngineCounters {
        &self.counters
    }
}

/// One request on its way upstream and back.
struct UpstreamCall {
    client: RemoteClient,
    options: RemoteOptions,
    counters: std::sync::Arc<EngineCounters>,
    events: mpsc::UnboundedSender<TokenEvent>,
    prompt_estimate: usize,
}

/// How a call ended, for the counters.
enum Outcome {
    Finished,
    Cancelled,
    Failed,
}

impl UpstreamCall {
    async fn run(self, request: Request<Full<Bytes>>) {
        let mut generated = 0;
        let outcome = self.exchange(request, &mut generated).await;
        let c = &self.counters;
        c.active.fetch_sub(1, Ordering::Relaxed);
        c.generated_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
        let counter = match outcome {
            Outcome::Finished => &c.finished,
            Outcome::Cancelled => &c.cancelled,
            Outcome::Failed => &c.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends the terminal error event: retryable while nothing was generated.
    fn fail(&self, generated: usize, message: String) -> Outcome {
        let event = match generated {
            0 => TokenEvent::Unavailable(message),
            _ => TokenEvent::Failed(message),
        };
        let _ = self.events.send(event);
        Outcome::Failed
    }

    async fn exchange(&self, request: Request<Full<Bytes>>, generated: &mut usize) -> Outcome {
        let started = Instant::now();
        let base = &self.options.base_url;
        let response = tokio::select! {
            _ = self.events.closed() => return Outcome::Cancelled,
            response = tokio::time::timeout(self.options.response_timeout, self.client.http.request(request)) => response,
        };
        let response = match response {
            Err(_) => {
                let timeout = self.options.response_timeout;
                return self.fail(
                    0,
                    format!("upstream {base} did not answer within {timeout:?}"),
                );
            }
            Ok(Err(e)) => {
                return self.fail(0, format!("cannot reach upstream {base}: {}", describe(e)))
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            let body =
                tokio::time::timeout(self.options.idle_timeout, response.into_body().collect())
                    .await
                    .ok()
                    .and_then(|b| b.ok())
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
            let message = format!(
                "upstream {base} answered {status}: {}",
                error_message(&body)
            );
            // Overload and server errors: another replica may well serve it.
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                return self.fail(0, message);
            }
            let _ = self.events.send(TokenEvent::Failed(message));
            return Outcome::Failed;
        }

        let mut stream = BodyDataStream::new(response.into_body()).eventsource();
        let mut first_token = None;
        let mut finish_reason = None;
        let mut usage = None;
        loop {
            let next = tokio::select! {
                _ = self.events.closed() => return Outcome::Cancelled,
                next = tokio::time::timeout(self.options.idle_timeout, stream.next()) => next,
            };
            let event = match next {
                Err(_) => {
                    let idle = self.options.idle_timeout;
                    return self.fail(
                        *generated,
                        format!("upstream {base} sent nothing for {idle:?}"),
                    );
                }
                Ok(None) => {
                    return self.fail(
                        *generated,
                        format!("upstream {base} closed the stream before it finished"),
                    )
                }
                Ok(Some(Err(e))) => {
                    return self.fail(
                        *generated,
                        format!("reading the stream of upstream {base}: {e}"),
                    )
                }
                Ok(Some(Ok(event))) => event,
            };
            if event.data == "[DONE]" {
                break;
            }
            let chunk: Value = match serde_json::from_str(&event.data) {
                Ok(chunk) => chunk,
                Err(e) => {
                    return self.fail(
                        *generated,
                        format!("unreadable chunk from upstream {base}: {e}"),
                    )
                }
            };
            if let Some(error) = chunk.get("error") {
                let message = format!(
                    "upstream {base}: {}",
                    error_message(error.to_string().as_bytes())
                );
                return self.fail(*generated, message);
            }
            if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
                usage = Some(Usage {
                    prompt_tokens: u["prompt_tokens"].as_u64().unwrap_or(0) as usize,
                    completion_tokens: u["completion_tokens"].as_u64().unwrap_or(0) as usize,
                });
            }
            let Some(choice) = chunk["choices"].get(0) else {
                continue;
            };
            let text = choice["delta"]["content"]
                .as_str()
                .or_else(|| choice["text"].as_str())
                .unwrap_or("");
            let reason = choice["finish_reason"].as_str();
            // A chat stream opens with a role-only chunk; a finishing chunk may carry the last
            // text (vLLM) or none (the engine-worker). Every other chunk is one token.
            let opens = choice["delta"].get("role").is_some() && text.is_empty();
            if !opens && (reason.is_none() || !text.is_empty()) {
                first_token.get_or_insert_with(|| started.elapsed());
                *generated += 1;
                let token = TokenEvent::Token {
                    id: REMOTE_TOKEN_ID,
                    text: text.to_string(),
                };
                if self.events.send(token).is_err() {
                    return Outcome::Cancelled;
                }
            }
            if let Some(reason) = reason {
                finish_reason = Some(match reason {
                    "length" => FinishReason::Length,
                    _ => FinishReason::Stop,
                });
            }
        }
        let Some(finish_reason) = finish_reason else {
            return self.fail(
                *generated,
                format!("upstream {base} ended the stream without a finish reason"),
            );
        };
        let usage = usage.unwrap_or(Usage {
            prompt_tokens: self.prompt_estimate,
            completion_tokens: *generated,
        });
        self.counters
            .prompt_tokens
            .fetch_add(usage.prompt_tokens as u64, Ordering::Relaxed);
        let completion = Completion {
            finish_reason,
            usage,
            timing: RequestTiming {
                time_to_first_token: first_token.unwrap_or_default(),
                decode_steps: generated.saturating_sub(1),
                ..RequestTiming::default()
            },
        };
        let _ = self.events.send(TokenEvent::Finished(completion));
        Outcome::Finished
    }
}

/// The `message` of an OpenAI error body, else the body itself (shortened).
fn error_message(body: &[u8]) -> String {
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
    use crate::text::ChatMessage;

    #[test]
    fn base_urls_are_normalised_to_the_v1_prefix() {
        assert_eq!(api_base("http://h:8000").unwrap(), "http://h:8000/v1");
        assert_eq!(api_base("http://h:8000/v1/").unwrap(), "http://h:8000/v1");
        assert_eq!(api_base("http://h/npu/v1").unwrap(), "http://h/npu/v1");
        assert!(api_base("https://h:8000").is_err());
        assert!(api_base("h:8000").is_err());
    }

    #[test]
    fn prompt_estimates() {
        assert_eq!(estimate_prompt_tokens(&Prompt::Text("abcdefgh1".into())), 3);
        assert_eq!(estimate_prompt_tokens(&Prompt::Tokens(vec![1, 2])), 2);
        let chat = Prompt::Chat(vec![ChatMessage::new("user", "abcd")]);
        assert_eq!(estimate_prompt_tokens(&chat), 5);
    }

    #[test]
    fn error_messages_are_taken_from_openai_bodies() {
        let body = br#"{"error":{"message":"too long","type":"invalid_request_error"}}"#;
        assert_eq!(error_message(body), "too long");
        assert_eq!(error_message(b"plain"), "plain");
    }
}

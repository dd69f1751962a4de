#![warn(missing_docs)]

//! An engine on another machine: any OpenAI-compatible server (an `engine-worker`, vLLM, an NPU
//! vendor's server), reached over a pooled HTTP/1.1 client (`client`), spoken to in OpenAI's
//! wire format (`wire`), one call per request (`call`).
//!
//! Every request goes upstream as a stream (`stream: true` with `include_usage`), whatever the
//! client asked for: tokens then arrive as they are generated, a client that hangs up closes the
//! upstream connection (the upstream frees the sequence), and the usage the upstream reports is
//! what gets billed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;

use engine_api::{
    Engine, EngineCounters, GenerationRequest, LoadReport, ModelInfo, PreparedPrompt, ProbeError,
    Prompt, ReportedLoad, TokenStream,
};
use engine_api::{EngineError, Result};

mod call;
mod client;
pub mod sse;
pub mod wire;

use call::UpstreamCall;
pub use client::RemoteClient;
use client::{api_base, describe};
use wire::upstream_request;

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

/// One upstream replica of one model.
pub struct RemoteEngine {
    info: ModelInfo,
    options: RemoteOptions,
    /// `<base>/v1`, without a trailing slash.
    api_base: String,
    client: RemoteClient,
    counters: std::sync::Arc<EngineCounters>,
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
    /// A replica of `model_id` at `options.base_url`. Its requests run inside their streams'
    /// readers ([`TokenStream::driven`]), on the caller's runtime.
    pub fn new(model_id: &str, options: RemoteOptions, client: RemoteClient) -> Result<Self> {
        let api_base = api_base(&options.base_url)?;
        Ok(Self {
            info: ModelInfo {
                id: model_id.to_string(),
                context_length: options.context_length,
                // Unknown upstream; only local engines check ids against it.
                vocab_size: 0,
                // The upstream applies its own model's defaults to what is not forwarded.
                sampling_defaults: Default::default(),
                file: Default::default(),
            },
            options,
            api_base,
            client,
            counters: Default::default(),
            next_id: AtomicU64::new(0),
        })
    }

    /// The upstream's base URL as configured.
    pub fn base_url(&self) -> &str {
        &self.options.base_url
    }

    /// A health check: `GET /load` of an `engine-worker` (with its load for this model), else
    /// `GET /v1/models` of any OpenAI-compatible server (healthy, load unknown).
    pub async fn probe(
        &self,
        timeout: Duration,
    ) -> std::result::Result<Option<ReportedLoad>, ProbeError> {
        let no_answer = |e: ExchangeError| ProbeError::NoAnswer(e.to_string());
        let root = self.api_base.trim_end_matches("/v1");
        let (status, body) = self
            .exchange(Method::GET, &format!("{root}/load"), None, timeout)
            .await
            .map_err(no_answer)?;
        if status == StatusCode::OK {
            let report: LoadReport = serde_json::from_slice(&body)
                .map_err(|e| ProbeError::UnreadableReport(e.to_string()))?;
            let load = report
                .models
                .into_iter()
                .find(|m| m.model == self.options.upstream_model);
            return load
                .map(Some)
                .ok_or_else(|| ProbeError::NotServed(self.options.upstream_model.clone()));
        }
        let (status, _) = self
            .exchange(
                Method::GET,
                &format!("{}/models", self.api_base),
                None,
                timeout,
            )
            .await
            .map_err(no_answer)?;
        if status.is_success() {
            Ok(None)
        } else {
            Err(ProbeError::Status(status.as_u16()))
        }
    }

    /// One request that is not a generation (health checks, embeddings) and its whole
    /// answer, within `timeout`; `json` is sent as the body.
    async fn exchange(
        &self,
        method: Method,
        url: &str,
        json: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> std::result::Result<(StatusCode, Bytes), ExchangeError> {
        let mut builder = self.request_builder(method, url)?;
        let body = match json {
            Some(json) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(json.to_string())
            }
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(body))?;
        let exchange = async {
            let connection = |e| ExchangeError::Connection(describe(e));
            let response = self
                .client
                .http
                .request(request)
                .await
                .map_err(connection)?;
            let status = response.status();
            let body = response.into_body().collect().await;
            let body = body.map_err(|e| ExchangeError::Connection(describe(e)))?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ExchangeError::Timeout(timeout))?
    }

    fn request_builder(
        &self,
        method: Method,
        url: &str,
    ) -> std::result::Result<http::request::Builder, ExchangeError> {
        let uri: Uri = url.parse().map_err(|source| ExchangeError::BadUrl {
            url: url.to_string(),
            source,
        })?;
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(key) = &self.options.api_key {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        Ok(builder)
    }
}

/// Rough prompt size for admission when the upstream does the tokenising: four bytes per token,
/// plus four tokens of template framing per chat message (English text with BPE tokenizers comes
/// out close; the upstream's reported usage is what gets billed).
pub fn estimate_prompt_tokens(prompt: &Prompt) -> usize {
    let bytes_to_tokens = |s: &str| s.len().div_ceil(4);
    match prompt {
        Prompt::Tokens(ids) => ids.len(),
        Prompt::Text(text) => bytes_to_tokens(text),
        chat => chat
            .plain_messages()
            .unwrap_or_default()
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
        if let Some(adapter) = &request.adapter {
            // An upstream would answer with its base model: never that in the adapter's name.
            return Err(EngineError::InvalidInput(format!(
                "adapter `{}`: LoRA adapters are served by local engines only",
                adapter.id
            )));
        }
        let estimate = estimate_prompt_tokens(&request.prompt);
        if estimate == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        let (url, body) = upstream_request(&self.api_base, &self.options.upstream_model, &request);
        let mut builder = self
            .request_builder(Method::POST, &url)
            .map_err(|e| EngineError::Load(e.to_string()))?
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "text/event-stream");
        if let Some(traceparent) = &request.traceparent {
            builder = builder.header("traceparent", traceparent);
        }
        let http_request = builder
            .body(Full::new(Bytes::from(body)))
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // The call runs inside the stream's reader (the response's task): no task of its own,
        // no hand-over of each token between two tasks.
        Ok(TokenStream::driven(
            id,
            estimate,
            receiver,
            call.run(http_request),
        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use engine_api::ChatMessage;

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
}

/// Why a call upstream that is not a generation (a health check, embeddings) got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The upstream's URL does not parse.
    #[error("bad upstream URL `{url}`: {source}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// The request could not be built.
    #[error("{0}")]
    Request(#[from] http::Error),
    /// The connection failed or broke off (the client's errors and their causes, on one line).
    #[error("{0}")]
    Connection(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Why an upstream call that is not a generation (embeddings) did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamError {
    /// The upstream refused the request as invalid (4xx but 429): the request's fault, not
    /// worth another replica.
    Refused(engine_api::Refusal),
    /// The upstream could not serve it (unreachable, timed out, 5xx, 429, unreadable answer):
    /// another replica may.
    Unavailable(String),
}

/// Vectors an upstream's `/v1/embeddings` returned.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteEmbeddings {
    /// One per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// The input tokens the upstream counted (its `usage.prompt_tokens`), if it said.
    pub prompt_tokens: Option<usize>,
}

impl RemoteEngine {
    /// `POST /v1/embeddings` upstream with the client's `input` as given (strings or token
    /// ids: the upstream tokenises), vectors asked for as floats.
    pub async fn embeddings(
        &self,
        input: &serde_json::Value,
        dimensions: Option<u64>,
    ) -> std::result::Result<RemoteEmbeddings, UpstreamError> {
        let mut body = serde_json::json!({
            "model": self.options.upstream_model,
            "input": input,
            "encoding_format": "float",
        });
        if let Some(dimensions) = dimensions {
            body["dimensions"] = dimensions.into();
        }
        let url = format!("{}/embeddings", self.api_base);
        let base = &self.options.base_url;
        let (status, body) = self
            .exchange(
                Method::POST,
                &url,
                Some(&body),
                self.options.response_timeout,
            )
            .await
            .map_err(|e| UpstreamError::Unavailable(format!("upstream {base}: {e}")))?;
        if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
            return Err(UpstreamError::Refused(wire::refusal(&body)));
        }
        if !status.is_success() {
            return Err(UpstreamError::Unavailable(format!(
                "upstream {base} answered {status}: {}",
                wire::error_message(&body)
            )));
        }
        wire::read_embeddings(&body).map_err(|e| {
            UpstreamError::Unavailable(format!("upstream {base} sent unreadable embeddings: {e}"))
        })
    }
}

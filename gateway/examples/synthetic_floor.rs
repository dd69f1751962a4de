//! The floor of the gateway-overhead benchmark: the same `synthetic` engine as the gateway's,
//! behind the thinnest OpenAI-shaped HTTP server we can write: no authentication, no quotas, no
//! metrics, no validation, no middleware. The gap between a run against this and a run against
//! the gateway is what the gateway itself costs. A benchmark tool only.
//!
//! `cargo run --release -p gateway --example synthetic_floor -- --listen 127.0.0.1:9100
//!  --tokens-per-second 0 --output-tokens 16`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use clap::Parser;
use engine_api::{
    Engine, GenerationRequest, Prompt, SamplingParams, SyntheticEngine, SyntheticOptions,
    TokenEvent,
};
use futures::Stream;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    #[arg(long, default_value_t = 0.0)]
    tokens_per_second: f64,
    #[arg(long)]
    output_tokens: Option<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let engine: Arc<dyn Engine> = Arc::new(SyntheticEngine::start(
        "synthetic",
        SyntheticOptions {
            tokens_per_second: args.tokens_per_second,
            output_tokens: args.output_tokens,
            ..Default::default()
        },
    )?);
    let app = Router::new()
        .route("/v1/completions", post(complete))
        .route("/v1/chat/completions", post(complete))
        .with_state(engine);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "synthetic floor listening on http://{}",
        listener.local_addr()?
    );
    // One small write per token, as the gateway does: no Nagle delay on either.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn complete(State(engine): State<Arc<dyn Engine>>, Json(body): Json<Value>) -> Response {
    let prompt = match body["prompt"].as_str() {
        Some(text) => text.to_string(),
        None => body["messages"][0]["content"]
            .as_str()
            .unwrap_or("x")
            .to_string(),
    };
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(16) as usize;
    let request = GenerationRequest::new(
        Prompt::Text(prompt),
        SamplingParams::greedy(max_tokens),
        "floor".parse().expect("a valid tenant id"),
    );
    let stream = match engine.submit(request) {
        Ok(stream) => stream,
        Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    if body["stream"].as_bool() == Some(true) {
        Sse::new(events(stream)).into_response()
    } else {
        match stream.collect().await {
            Ok(out) => Json(json!({
                "object": "text_completion",
                "choices": [{"index": 0, "text": out.text, "finish_reason": out.completion.finish_reason.as_str()}],
                "usage": {"prompt_tokens": out.completion.usage.prompt_tokens, "completion_tokens": out.completion.usage.completion_tokens},
            }))
            .into_response(),
            Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
}

fn events(mut stream: engine_api::TokenStream) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream::stream! {
        while let Some(event) = stream.next().await {
            match event {
                TokenEvent::Token { text, .. } => {
                    yield Ok(Event::default().data(json!({"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": null}]}).to_string()));
                }
                TokenEvent::Finished(done) => {
                    yield Ok(Event::default().data(json!({"object": "text_completion", "choices": [{"index": 0, "text": "", "finish_reason": done.finish_reason.as_str()}], "usage": {"prompt_tokens": done.usage.prompt_tokens, "completion_tokens": done.usage.completion_tokens}}).to_string()));
                    break;
                }
                TokenEvent::Failed(_)
                | TokenEvent::Unavailable(_)
                | TokenEvent::Declined(_)
                | TokenEvent::Refused(_) => break,
            }
        }
        yield Ok(Event::default().data("[DONE]"));
    }
}

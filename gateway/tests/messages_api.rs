//! Anthropic's Messages API end to end, on the real gateway and model: the official
//! `anthropic` SDK and LangChain's `ChatAnthropic` unchanged (plain, streamed, tools,
//! `count_tokens`), errors in Anthropic's shape from every layer, and the ledger record of a
//! message tagged with its API.

mod common;

use common::{digest, Options, TestGateway, MODEL};
use serde_json::{json, Value};

const ADMIN: &str = "sk-messages-admin";
const KEY: &str = "sk-messages-tenant";

fn gateway() -> TestGateway {
    let config = format!(
        "admin_keys = [\"{}\"]\n[server]\nmax_body_bytes = 65536\n[[models]]\nid = \"{MODEL}\"\n[[tenants]]\nid = \"acme\"\nkeys = [\"{}\"]\n",
        digest(ADMIN),
        digest(KEY)
    );
    let mut gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    gw.key = KEY.to_string();
    gw
}

/// `POST /v1/messages` with Anthropic's headers: `(status, body)`.
async fn message(gw: &TestGateway, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut request = gw
        .client()
        .post(gw.url("/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn the_official_anthropic_sdk_and_langchain_talk_to_the_gateway_unchanged() {
    let gw = gateway();
    let seen = common::run_sdk_script("anthropic_messages.py", &gw.base, KEY, MODEL).await;
    let plain = &seen["plain"];
    assert_eq!(plain["type"], "message", "{seen}");
    assert_eq!(plain["role"], "assistant");
    assert!(!plain["text"].as_str().unwrap().is_empty(), "{seen}");
    assert!(["end_turn", "max_tokens"].contains(&plain["stop_reason"].as_str().unwrap()));
    assert!(plain["input_tokens"].as_u64().unwrap() > 5);
    assert!(plain["output_tokens"].as_u64().unwrap() >= 1);
    // Greedy: the stream says what the whole message said, in Anthropic's event order.
    let stream = &seen["stream"];
    assert_eq!(stream["text"], plain["text"], "{seen}");
    assert_eq!(stream["final_text"], plain["text"]);
    assert_eq!(stream["stop_reason"], plain["stop_reason"]);
    assert_eq!(stream["output_tokens"], plain["output_tokens"]);
    let events: Vec<&str> = stream["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(events.first(), Some(&"message_start"), "{events:?}");
    assert_eq!(events.last(), Some(&"message_stop"), "{events:?}");
    for wanted in [
        "content_block_start",
        "text",
        "content_block_stop",
        "message_delta",
    ] {
        assert!(events.contains(&wanted), "{wanted} in {events:?}");
    }
    // A forced call, read by the SDK as a `tool_use` block with its input object, and a
    // follow-up turn that answers it.
    let tools = &seen["tools"];
    assert_eq!(tools["stop_reason"], "tool_use", "{seen}");
    assert_eq!(tools["name"], "get_weather");
    assert!(tools["input"]["city"].is_string(), "{seen}");
    assert!(!tools["follow_up_types"].as_array().unwrap().is_empty());
    let streamed = &seen["stream_tools"];
    assert_eq!(streamed["stop_reason"], "tool_use", "{seen}");
    assert!(streamed["input"][0]["city"].is_string(), "{seen}");
    assert!(streamed["events"]
        .as_array()
        .unwrap()
        .contains(&json!("input_json")));
    // `count_tokens` counts what the same message's prompt was billed for.
    assert_eq!(seen["count_tokens"], plain["input_tokens"], "{seen}");
    assert_eq!(
        seen["error"],
        json!({"status": 404, "type": "not_found_error"})
    );
    assert!(
        !seen["langchain"]["text"].as_str().unwrap().is_empty(),
        "{seen}"
    );
    assert!(seen["langchain"]["output_tokens"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn errors_leave_in_anthropics_shape_and_records_name_the_api() {
    let gw = gateway();
    let ok =
        json!({"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]});
    let shape = |body: &Value, kind: &str| {
        assert_eq!(body["type"], "error", "{body}");
        assert_eq!(body["error"]["type"], kind, "{body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    };
    // From the authentication layer.
    let (status, body) = message(&gw, None, &ok.to_string()).await;
    assert_eq!(status, 401);
    shape(&body, "authentication_error");
    let (status, body) = message(&gw, Some("sk-nobody"), &ok.to_string()).await;
    assert_eq!(status, 401);
    shape(&body, "authentication_error");
    // From the request itself, naming the field.
    for (body, param) in [
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}),
            "max_tokens",
        ),
        (
            json!({"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}]}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"model": MODEL, "max_tokens": 4, "temperature": 7, "messages": [{"role": "user", "content": "Hi"}]}),
            "temperature",
        ),
    ] {
        let (status, answer) = message(&gw, Some(KEY), &body.to_string()).await;
        assert_eq!(status, 400, "{answer}");
        shape(&answer, "invalid_request_error");
        assert_eq!(answer["error"]["param"], param, "{answer}");
    }
    let (status, body) = message(&gw, Some(KEY), "{not json").await;
    assert_eq!(status, 400);
    shape(&body, "invalid_request_error");
    let (status, body) = message(
        &gw,
        Some(KEY),
        &json!({"model": "nope", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})
            .to_string(),
    )
    .await;
    assert_eq!(status, 404);
    shape(&body, "not_found_error");
    // Past the body limit (the layer's 413).
    let huge = "x".repeat(100_000);
    let (status, body) = message(&gw, Some(KEY), &huge).await;
    assert_eq!(status, 413, "{body}");
    shape(&body, "request_too_large");
    // A served message: its record says which API it came through.
    let response = gw
        .client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY)
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("msg_"), "{body}");
    let (status, records) = gw.get("/admin/usage/records", Some(ADMIN)).await;
    assert_eq!(status, 200);
    let record = records["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("{records}"))
        .clone();
    assert_eq!(record["api"], "messages", "{record}");
    assert_eq!(record["tenant"], "acme");
    assert_eq!(
        record["completion_tokens"].as_u64().unwrap(),
        body["usage"]["output_tokens"].as_u64().unwrap()
    );
    // A chat request's record says so too.
    let (status, _) = gw
        .post(
            "/v1/chat/completions",
            json!({"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, records) = gw.get("/admin/usage/records", Some(ADMIN)).await;
    assert!(records["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["api"] == "chat.completions"));
}

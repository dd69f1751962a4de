//! OpenAI's Responses API end to end, on the real gateway and model with its control-plane
//! store (SQLite): the official `openai` SDK unchanged (plain, streamed, structured, function
//! tools with a follow-up through `previous_response_id`, retrieve, delete), stored responses
//! that no other tenant can read or continue, and the errors of bad input.

mod common;

use common::{call, digest, Options, TestGateway, MODEL};
use serde_json::{json, Value};

const ADMIN: &str = "sk-responses-admin";
const ACME: &str = "sk-responses-acme";
const BETA: &str = "sk-responses-beta";

fn gateway() -> TestGateway {
    let config = format!(
        "admin_keys = [\"{}\"]\n[control_plane]\nenabled = true\n[[models]]\nid = \"{MODEL}\"\n\
         [[tenants]]\nid = \"acme\"\nkeys = [\"{}\"]\n[[tenants]]\nid = \"beta\"\nkeys = [\"{}\"]\n",
        digest(ADMIN),
        digest(ACME),
        digest(BETA)
    );
    let mut gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    gw.key = ACME.to_string();
    gw
}

#[tokio::test]
async fn the_official_openai_sdk_speaks_the_responses_api_unchanged() {
    let gw = gateway();
    let seen = common::run_sdk_script("responses.py", &gw.base, ACME, MODEL).await;
    let plain = &seen["plain"];
    assert!(plain["id"].as_str().unwrap().starts_with("resp_"), "{seen}");
    assert!(["completed", "incomplete"].contains(&plain["status"].as_str().unwrap()));
    assert!(!plain["text"].as_str().unwrap().is_empty(), "{seen}");
    assert_eq!(plain["output_types"], json!(["message"]));
    assert!(plain["input_tokens"].as_u64().unwrap() > 5);
    // Greedy: the stream tells what the whole response told, in the typed event order.
    let stream = &seen["stream"];
    assert_eq!(stream["text"], plain["text"], "{seen}");
    assert_eq!(stream["final_text"], plain["text"]);
    assert_eq!(stream["status"], plain["status"]);
    assert_eq!(stream["output_tokens"], plain["output_tokens"]);
    let events: Vec<&str> = stream["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(
        &events[..2],
        ["response.created", "response.in_progress"],
        "{events:?}"
    );
    let done = if plain["status"] == "completed" {
        "response.completed"
    } else {
        "response.incomplete"
    };
    assert_eq!(events.last(), Some(&done), "{events:?}");
    for wanted in [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ] {
        assert!(events.contains(&wanted), "{wanted} in {events:?}");
    }
    let cat = &seen["structured"];
    assert!(cat["name"].is_string() && cat["legs"].is_u64(), "{seen}");
    let tools = &seen["tools"];
    assert_eq!(tools["name"], "get_weather", "{seen}");
    assert!(tools["arguments"]["city"].is_string(), "{seen}");
    assert!(tools["follow_up_previous"]
        .as_str()
        .unwrap()
        .starts_with("resp_"));
    assert!(!tools["follow_up_types"].as_array().unwrap().is_empty());
    assert!(
        tools["follow_up_input_tokens"].as_u64() > tools["first_input_tokens"].as_u64(),
        "the follow-up carries the first turn: {seen}"
    );
    assert_eq!(
        seen["input_items"],
        json!({"plain": [["message", "user"]], "follow_up": ["function_call_output"]}),
        "{seen}"
    );
    assert_eq!(seen["stored"]["retrieved_text"], plain["text"]);
    assert_eq!(seen["stored"]["after_delete"], 404);
}

#[tokio::test]
async fn stored_responses_are_their_tenants_alone_and_bad_input_is_named() {
    let gw = gateway();
    let (status, made) = call(
        &gw,
        "POST",
        "/v1/responses",
        ACME,
        Some(json!({"model": MODEL, "input": "Hello", "max_output_tokens": 4})),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    let id = made["id"].as_str().unwrap();
    assert_eq!(made["object"], "response");
    assert_eq!(made["store"], true);
    // The owner reads it; another tenant can neither read, continue nor delete it, and is not
    // told that it exists.
    let (status, got) = call(&gw, "GET", &format!("/v1/responses/{id}"), ACME, None).await;
    assert_eq!(status, 200);
    assert_eq!(got["output"], made["output"]);
    let (status, body) = call(&gw, "GET", &format!("/v1/responses/{id}"), BETA, None).await;
    assert_eq!(status, 404, "{body}");
    let (status, unknown) = call(&gw, "GET", "/v1/responses/resp_nothing", BETA, None).await;
    assert_eq!(status, 404);
    assert_eq!(
        body["error"]["message"],
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .replace("resp_nothing", id)
    );
    let (status, body) = call(
        &gw,
        "POST",
        "/v1/responses",
        BETA,
        Some(json!({"model": MODEL, "input": "Go on", "previous_response_id": id, "max_output_tokens": 4})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["param"], "previous_response_id");
    let (status, _) = call(&gw, "DELETE", &format!("/v1/responses/{id}"), BETA, None).await;
    assert_eq!(status, 404);
    let (status, _) = call(&gw, "GET", &format!("/v1/responses/{id}"), ACME, None).await;
    assert_eq!(status, 200, "still there for its owner");
    // `store: false` keeps nothing.
    let (status, unstored) = call(
        &gw,
        "POST",
        "/v1/responses",
        ACME,
        Some(json!({"model": MODEL, "input": "Hello", "max_output_tokens": 2, "store": false})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(unstored["store"], false);
    let path = format!("/v1/responses/{}", unstored["id"].as_str().unwrap());
    assert_eq!(call(&gw, "GET", &path, ACME, None).await.0, 404);
    // Bad input, named.
    for (body, param) in [
        (json!({"model": MODEL}), "input"),
        (
            json!({"model": MODEL, "input": [{"type": "item_reference", "id": "x"}]}),
            "input[0]",
        ),
        (
            json!({"model": MODEL, "input": "x", "tools": [{"type": "web_search"}]}),
            "tools[0]",
        ),
        (
            json!({"model": MODEL, "input": "x", "background": true}),
            "background",
        ),
        (
            json!({"model": MODEL, "input": "x", "temperature": 9}),
            "temperature",
        ),
    ] {
        let (status, answer) = call(&gw, "POST", "/v1/responses", ACME, Some(body.clone())).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_eq!(answer["error"]["param"], param, "{answer}");
    }
    // Every response's ledger record names its API.
    let (status, records) = gw.get("/admin/usage/records", Some(ADMIN)).await;
    assert_eq!(status, 200);
    let apis: Vec<&Value> = records["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["api"])
        .collect();
    assert_eq!(apis.len(), 2, "{records}");
    assert!(apis.iter().all(|api| **api == "responses"), "{records}");
}

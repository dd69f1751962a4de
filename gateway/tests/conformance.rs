//! Conformance to the providers' own published schemas: every response body and stream event
//! of every OpenAI-shaped endpoint validates against OpenAI's OpenAPI document, and the
//! Messages API's against Anthropic's documented shapes. The schemas are vendored
//! (`gateway/tests/schemas/`, made by `scripts/oracles/vendor-openai-schemas.py` and
//! `vendor-anthropic-schemas.py`), so this runs in CI without the network.

mod common;

use std::collections::HashMap;

use common::{call, digest, Options, TestGateway, MODEL};
use serde_json::{json, Map, Value};

const KEY: &str = "sk-conformance";
const EMBEDDING_MODEL: &str = "all-minilm-l6-v2";

/// OpenAPI's 3.0-style `nullable: true` (which the 3.1 document still has in places) read as
/// JSON Schema: "or null".
fn nullable_as_json_schema(node: &mut Value) {
    match node {
        Value::Object(map) => {
            for value in map.values_mut() {
                nullable_as_json_schema(value);
            }
            if map.remove("nullable") == Some(Value::Bool(true)) {
                let inner = Value::Object(std::mem::take(map));
                map.insert("anyOf".into(), json!([inner, {"type": "null"}]));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(nullable_as_json_schema),
        _ => {}
    }
}

/// Validators of OpenAI's schemas by name.
struct OpenAiSchemas {
    components: Value,
    compiled: HashMap<String, jsonschema::Validator>,
}

impl OpenAiSchemas {
    fn load() -> Self {
        let text = include_str!("schemas/openai.json");
        let mut document: Value = serde_json::from_str(text).unwrap();
        let mut components = document["components"].take();
        nullable_as_json_schema(&mut components);
        // The one place the document and OpenAI's own API part ways: the document gives
        // streamed text completions no schema of their own (they are `CreateCompletionResponse`
        // chunks), and that schema's `finish_reason` is a string, while OpenAI's API (and vLLM,
        // and every client) streams `null` until a choice ends. Chunks are checked against the
        // same schema with only that field also allowing `null`.
        let schemas = &mut components["schemas"];
        let mut chunk = schemas["CreateCompletionResponse"].clone();
        let finish = &mut chunk["properties"]["choices"]["items"]["properties"]["finish_reason"];
        assert_eq!(finish["type"], "string", "the document changed: look again");
        *finish = json!({"anyOf": [finish.take(), {"type": "null"}]});
        schemas["CreateCompletionStreamChunk"] = chunk;
        // And the document's embedding is an array of numbers only, while with
        // `encoding_format: "base64"` (the official SDKs' default) OpenAI's API answers a
        // base64 string: those answers are checked against the same schemas with only that
        // field a string.
        let mut embedding = schemas["Embedding"].clone();
        assert_eq!(embedding["properties"]["embedding"]["type"], "array");
        embedding["properties"]["embedding"] =
            json!({"type": "string", "contentEncoding": "base64"});
        schemas["EmbeddingBase64"] = embedding;
        let mut response = schemas["CreateEmbeddingResponse"].clone();
        response["properties"]["data"]["items"] =
            json!({"$ref": "#/components/schemas/EmbeddingBase64"});
        schemas["CreateEmbeddingResponseBase64"] = response;
        Self {
            components,
            compiled: HashMap::new(),
        }
    }

    /// Asserts `instance` is a valid `name` (what: where it came from, for the message).
    fn check(&mut self, name: &str, instance: &Value, what: &str) {
        let components = &self.components;
        let validator = self.compiled.entry(name.to_string()).or_insert_with(|| {
            let root = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$ref": format!("#/components/schemas/{name}"),
                "components": components,
            });
            jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{name}: {e}"))
        });
        assert_valid(
            validator,
            instance,
            &format!("{what} is not a valid OpenAI `{name}`"),
        );
    }
}

/// Asserts `instance` passes `validator`, else fails with `message` and every error.
fn assert_valid(validator: &jsonschema::Validator, instance: &Value, message: &str) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{message}:\n{}\n{instance}",
        errors.join("\n")
    );
}

/// Validators of Anthropic's shapes by name.
fn anthropic(name: &str) -> jsonschema::Validator {
    let document: Value = serde_json::from_str(include_str!("schemas/anthropic.json")).unwrap();
    jsonschema::validator_for(&document["schemas"][name]).unwrap()
}

fn check_anthropic(name: &str, instance: &Value, what: &str) {
    assert_valid(
        &anthropic(name),
        instance,
        &format!("{what} is not a valid Anthropic `{name}`"),
    );
}

/// Server-sent events: `(event name, data)`, `[DONE]` left out.
async fn events(gw: &TestGateway, path: &str, body: Value) -> Vec<(Option<String>, Value)> {
    let response = gw
        .client()
        .post(gw.url(path))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .filter_map(|event| {
            let mut name = None;
            let mut data = None;
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(d.to_string());
                }
            }
            let data = data?;
            (data != "[DONE]").then(|| (name, serde_json::from_str(&data).unwrap()))
        })
        .collect()
}

fn gateway() -> TestGateway {
    let config = format!(
        "[control_plane]\nenabled = true\n\
         [[models]]\nid = \"{MODEL}\"\n[[models]]\nid = \"{EMBEDDING_MODEL}\"\nkind = \"embedding\"\n\
         [[tenants]]\nid = \"acme\"\nkeys = [\"{}\"]\n",
        digest(KEY)
    );
    let mut gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    gw.key = KEY.to_string();
    gw
}

const WEATHER: &str = r#"{"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}"#;

#[tokio::test]
async fn every_openai_shaped_body_and_event_validates_against_openais_schema() {
    let gw = gateway();
    let mut schemas = OpenAiSchemas::load();
    let weather: Value = serde_json::from_str(WEATHER).unwrap();
    let messages = json!([{"role": "user", "content": "Name a colour."}]);

    let (_, models) = call(&gw, "GET", "/v1/models", KEY, None).await;
    schemas.check("ListModelsResponse", &models, "GET /v1/models");
    let (_, model) = call(&gw, "GET", &format!("/v1/models/{MODEL}"), KEY, None).await;
    schemas.check("Model", &model, "GET /v1/models/{model}");

    for (what, body) in [
        (
            "chat",
            json!({"model": MODEL, "messages": messages, "max_tokens": 8}),
        ),
        (
            "chat with n and logprobs",
            json!({"model": MODEL, "messages": messages, "max_tokens": 4, "n": 2, "logprobs": true, "top_logprobs": 2}),
        ),
        (
            "chat with a tool call",
            json!({"model": MODEL, "messages": messages, "max_tokens": 60,
                   "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": weather}}],
                   "tool_choice": "required"}),
        ),
        (
            "chat with structured output",
            json!({"model": MODEL, "messages": messages, "max_tokens": 60,
                   "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": weather}}}),
        ),
    ] {
        let (status, answer) =
            call(&gw, "POST", "/v1/chat/completions", KEY, Some(body.clone())).await;
        assert_eq!(status, 200, "{answer}");
        schemas.check("CreateChatCompletionResponse", &answer, what);
        let mut streamed = body;
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        for (_, chunk) in events(&gw, "/v1/chat/completions", streamed).await {
            schemas.check(
                "CreateChatCompletionStreamResponse",
                &chunk,
                &format!("{what}, streamed"),
            );
        }
    }

    let completion =
        json!({"model": MODEL, "prompt": ["One", "Two"], "max_tokens": 4, "logprobs": 2});
    let (status, answer) = call(
        &gw,
        "POST",
        "/v1/completions",
        KEY,
        Some(completion.clone()),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    schemas.check("CreateCompletionResponse", &answer, "completions");
    let mut streamed = completion;
    streamed["stream"] = json!(true);
    for (_, chunk) in events(&gw, "/v1/completions", streamed).await {
        schemas.check(
            "CreateCompletionStreamChunk",
            &chunk,
            "completions, streamed",
        );
    }

    for (body, schema) in [
        (
            json!({"model": EMBEDDING_MODEL, "input": ["a", "b"]}),
            "CreateEmbeddingResponse",
        ),
        (
            json!({"model": EMBEDDING_MODEL, "input": "a", "encoding_format": "base64"}),
            "CreateEmbeddingResponseBase64",
        ),
    ] {
        let (status, answer) = call(&gw, "POST", "/v1/embeddings", KEY, Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        schemas.check(schema, &answer, "embeddings");
    }

    // Error bodies, from the layers and the handlers.
    for (method, path, key, body) in [
        (
            "POST",
            "/v1/chat/completions",
            KEY,
            Some(json!({"model": MODEL, "messages": messages, "temperature": 9})),
        ),
        (
            "POST",
            "/v1/chat/completions",
            KEY,
            Some(json!({"model": "nope", "messages": messages})),
        ),
        (
            "POST",
            "/v1/chat/completions",
            "sk-nobody",
            Some(json!({"model": MODEL, "messages": messages})),
        ),
        ("GET", "/v1/nowhere", KEY, None),
        ("GET", "/v1/responses/resp_none", KEY, None),
    ] {
        let (status, answer) = call(&gw, method, path, key, body).await;
        assert!(status >= 400, "{answer}");
        schemas.check(
            "ErrorResponse",
            &answer,
            &format!("{method} {path} -> {status}"),
        );
    }

    // The Responses API, whole and streamed, text and a function call.
    let tool =
        json!({"type": "function", "name": "get_weather", "parameters": weather, "strict": false});
    for (what, body) in [
        (
            "response",
            json!({"model": MODEL, "input": "Name a colour.", "instructions": "Be brief.", "max_output_tokens": 8}),
        ),
        (
            "response with a call",
            json!({"model": MODEL, "input": "Weather in Lyon?", "tools": [tool], "tool_choice": "required", "max_output_tokens": 60}),
        ),
        (
            "structured response",
            json!({"model": MODEL, "input": "A city.", "max_output_tokens": 60,
                   "text": {"format": {"type": "json_schema", "name": "w", "schema": weather}}}),
        ),
    ] {
        let (status, answer) = call(&gw, "POST", "/v1/responses", KEY, Some(body.clone())).await;
        assert_eq!(status, 200, "{answer}");
        schemas.check("Response", &answer, what);
        let id = answer["id"].as_str().unwrap();
        let (_, stored) = call(&gw, "GET", &format!("/v1/responses/{id}"), KEY, None).await;
        schemas.check("Response", &stored, &format!("{what}, stored"));
        let (_, items) = call(
            &gw,
            "GET",
            &format!("/v1/responses/{id}/input_items"),
            KEY,
            None,
        )
        .await;
        assert_eq!(items["data"].as_array().map(Vec::len), Some(1), "{items}");
        schemas.check("ResponseItemList", &items, &format!("{what}, input items"));
        let mut streamed = body;
        streamed["stream"] = json!(true);
        let events = events(&gw, "/v1/responses", streamed).await;
        assert!(events.len() >= 4, "{events:?}");
        for (name, event) in events {
            let name = name.expect("every Responses event is named");
            assert_eq!(event["type"], name.as_str());
            let schema = match name.as_str() {
                "response.created" => "ResponseCreatedEvent",
                "response.in_progress" => "ResponseInProgressEvent",
                "response.output_item.added" => "ResponseOutputItemAddedEvent",
                "response.content_part.added" => "ResponseContentPartAddedEvent",
                "response.output_text.delta" => "ResponseTextDeltaEvent",
                "response.output_text.done" => "ResponseTextDoneEvent",
                "response.content_part.done" => "ResponseContentPartDoneEvent",
                "response.output_item.done" => "ResponseOutputItemDoneEvent",
                "response.function_call_arguments.delta" => {
                    "ResponseFunctionCallArgumentsDeltaEvent"
                }
                "response.function_call_arguments.done" => "ResponseFunctionCallArgumentsDoneEvent",
                "response.completed" => "ResponseCompletedEvent",
                "response.incomplete" => "ResponseIncompleteEvent",
                "response.failed" => "ResponseFailedEvent",
                other => panic!("an event OpenAI does not define: {other}"),
            };
            schemas.check(schema, &event, &format!("{what}: {name}"));
        }
    }

    // Files and batches.
    let line = json!({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": MODEL, "messages": messages, "max_tokens": 2}});
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::text(line.to_string()).file_name("in.jsonl"),
        );
    let file: Value = gw
        .client()
        .post(gw.url("/v1/files"))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    schemas.check("OpenAIFile", &file, "POST /v1/files");
    let (_, files) = call(&gw, "GET", "/v1/files", KEY, None).await;
    schemas.check("ListFilesResponse", &files, "GET /v1/files");
    let (_, batch) = call(
        &gw,
        "POST",
        "/v1/batches",
        KEY,
        Some(json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"})),
    )
    .await;
    schemas.check("Batch", &batch, "POST /v1/batches");
    let id = batch["id"].as_str().unwrap();
    let mut finished = batch.clone();
    for _ in 0..600 {
        finished = call(&gw, "GET", &format!("/v1/batches/{id}"), KEY, None)
            .await
            .1;
        if finished["status"] == "completed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(finished["status"], "completed", "{finished}");
    schemas.check("Batch", &finished, "a completed batch");
    let (_, batches) = call(&gw, "GET", "/v1/batches", KEY, None).await;
    schemas.check("ListBatchesResponse", &batches, "GET /v1/batches");
    let (_, deleted) = call(
        &gw,
        "DELETE",
        &format!("/v1/files/{}", file["id"].as_str().unwrap()),
        KEY,
        None,
    )
    .await;
    schemas.check("DeleteFileResponse", &deleted, "DELETE /v1/files/{id}");
}

#[tokio::test]
async fn every_messages_body_and_event_validates_against_anthropics_shapes() {
    let gw = gateway();
    let weather: Value = serde_json::from_str(WEATHER).unwrap();
    let tool = json!({"name": "get_weather", "description": "d", "input_schema": weather});
    for (what, body) in [
        (
            "message",
            json!({"model": MODEL, "max_tokens": 8, "system": "Be brief.", "messages": [{"role": "user", "content": "Name a colour."}]}),
        ),
        (
            "message with a call",
            json!({"model": MODEL, "max_tokens": 60, "tools": [tool], "tool_choice": {"type": "any"},
                   "messages": [{"role": "user", "content": "Weather in Lyon?"}]}),
        ),
    ] {
        let response = gw
            .client()
            .post(gw.url("/v1/messages"))
            .header("x-api-key", KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let message: Value = response.json().await.unwrap();
        check_anthropic("Message", &message, what);
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        for (name, event) in events(&gw, "/v1/messages", streamed).await {
            let name = name.expect("every Messages event is named");
            assert_eq!(event["type"], name.as_str());
            let schema = match name.as_str() {
                "message_start" => "RawMessageStartEvent",
                "content_block_start" => "RawContentBlockStartEvent",
                "content_block_delta" => "RawContentBlockDeltaEvent",
                "content_block_stop" => "RawContentBlockStopEvent",
                "message_delta" => "RawMessageDeltaEvent",
                "message_stop" => "RawMessageStopEvent",
                "ping" => continue,
                other => panic!("an event Anthropic does not define: {other}"),
            };
            check_anthropic(schema, &event, &format!("{what}: {name}"));
        }
        let mut count = body;
        count
            .as_object_mut()
            .map(|b: &mut Map<String, Value>| b.remove("max_tokens"));
        let (status, counted) =
            call(&gw, "POST", "/v1/messages/count_tokens", KEY, Some(count)).await;
        assert_eq!(status, 200, "{counted}");
        check_anthropic("MessageTokensCount", &counted, "count_tokens");
    }
    for body in [
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "nope", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}),
    ] {
        let (status, error) = call(&gw, "POST", "/v1/messages", KEY, Some(body)).await;
        assert!(status >= 400);
        check_anthropic("ErrorResponse", &error, "an error");
    }
    let (status, error) = call(&gw, "POST", "/v1/messages", "sk-nobody", Some(json!({}))).await;
    assert_eq!(status, 401);
    check_anthropic("ErrorResponse", &error, "an authentication error");
}

//! Structured output, tools, log probabilities and `n` end to end: the real gateway on the real
//! SmolLM2-135M-Instruct, over loopback HTTP, checked against independent validators (the
//! `jsonschema` crate) and the official openai Python SDK.

mod common;

use common::{TestGateway, MODEL};
use serde_json::{json, Value};

fn chat(text: &str, extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": text}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "languages": {"type": "array", "items": {"enum": ["fr", "de", "zh", "en"]}, "minItems": 1, "maxItems": 3},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"],
                "additionalProperties": false
            }
        },
        "required": ["name", "age", "languages", "address"],
        "additionalProperties": false
    })
}

fn json_schema_format(schema: &Value) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": schema}})
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "The current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": false
        }
    }})
}

fn assert_valid(schema: &Value, text: &str) -> Value {
    let value: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("does not parse ({e}): {text}"));
    let validator = jsonschema::validator_for(schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{text}: {errors:?}");
    value
}

#[tokio::test]
async fn json_schema_answers_validate_over_many_seeds_whole_and_streamed() {
    let gw = TestGateway::start_demo();
    let schema = person_schema();
    // n = 6 choices per request, each seeded apart, over two seeds: twelve samples at
    // temperature 1.
    let mut outputs = Vec::new();
    for seed in [11, 29] {
        let (status, body) = gw
            .post(
                "/v1/chat/completions",
                chat(
                    "Describe a person in JSON.",
                    json!({"response_format": json_schema_format(&schema), "temperature": 1.0, "seed": seed, "n": 6, "max_tokens": 300}),
                ),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let choices = body["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 6);
        for (i, choice) in choices.iter().enumerate() {
            assert_eq!(choice["index"], i);
            assert_eq!(choice["finish_reason"], "stop", "{choice}");
            let text = choice["message"]["content"].as_str().unwrap();
            assert_valid(&schema, text);
            outputs.push(text.to_string());
        }
    }
    outputs.sort();
    outputs.dedup();
    assert!(outputs.len() > 2, "sampling should vary: {outputs:?}");
    // Streamed: the concatenated deltas validate too.
    let events = gw
        .stream(
            "/v1/chat/completions",
            chat(
                "Describe a person in JSON.",
                json!({"response_format": json_schema_format(&schema), "stream": true, "temperature": 1.0, "seed": 5, "max_tokens": 300}),
            ),
        )
        .await;
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_valid(&schema, &text);
    // JSON mode: an object, whatever the prompt.
    let (status, body) = gw
        .post(
            "/v1/chat/completions",
            chat("Say hello.", json!({"response_format": {"type": "json_object"}, "temperature": 0, "max_tokens": 200})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        serde_json::from_str::<Value>(text).unwrap().is_object(),
        "{text}"
    );
}

#[tokio::test]
async fn unusable_schemas_and_tools_are_400s_naming_the_problem() {
    let gw = TestGateway::start_demo();
    for (extra, param) in [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "integr"}}}}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "minLength": 4, "maxLength": 1}}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}]}),
            "tools[0].function.parameters",
        ),
        (
            json!({"tools": [weather_tool()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (json!({"n": 17}), "n"),
        (
            json!({"tools": [weather_tool()], "tool_choice": "required", "response_format": {"type": "json_object"}}),
            "response_format",
        ),
    ] {
        let (status, body) = gw
            .post("/v1/chat/completions", chat("hi", extra.clone()))
            .await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert_eq!(body["error"]["param"], param, "{extra}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    // Nothing leaked: the gateway still serves.
    let (status, _) = gw
        .post("/v1/chat/completions", chat("hi", json!({"max_tokens": 2})))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn forced_tool_calls_parse_validate_and_stream() {
    let gw = TestGateway::start_demo();
    let parameters = weather_tool()["function"]["parameters"].clone();
    for (choice, seed) in [
        (json!("required"), 1),
        (
            json!({"type": "function", "function": {"name": "get_weather"}}),
            2,
        ),
    ] {
        let (status, body) = gw
            .post(
                "/v1/chat/completions",
                chat(
                    "What is the weather in Paris?",
                    json!({"tools": [weather_tool()], "tool_choice": choice, "temperature": 1.0, "seed": seed, "max_tokens": 100}),
                ),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
        assert!(choice["message"]["content"].is_null());
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_valid(&parameters, call["function"]["arguments"].as_str().unwrap());
    }
    // Streamed: one delta with the whole call, then `finish_reason: tool_calls`.
    let events = gw
        .stream(
            "/v1/chat/completions",
            chat(
                "What is the weather in Oslo?",
                json!({"tools": [weather_tool()], "tool_choice": "required", "stream": true, "max_tokens": 100}),
            ),
        )
        .await;
    let calls: Vec<&Value> = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_eq!(calls[0][0]["index"], 0);
    assert_valid(
        &parameters,
        calls[0][0]["function"]["arguments"].as_str().unwrap(),
    );
    let finish: Vec<&str> = events
        .iter()
        .filter_map(|e| e["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["tool_calls"]);
    let streamed_text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed_text, "", "a call is not content");
    // `auto` and `none` answer (a 135M model rarely calls on its own: either shape is valid),
    // and a follow-up turn with the call and the tool's result is accepted.
    for choice in ["auto", "none"] {
        let (status, body) = gw
            .post(
                "/v1/chat/completions",
                json!({"model": MODEL, "max_tokens": 20, "tools": [weather_tool()], "tool_choice": choice, "messages": [
                    {"role": "user", "content": "What is the weather in Paris?"},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"}
                ]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let finish = body["choices"][0]["finish_reason"].as_str().unwrap();
        assert!(["stop", "length", "tool_calls"].contains(&finish), "{body}");
        if choice == "none" {
            assert_ne!(finish, "tool_calls");
        }
    }
}

#[tokio::test]
async fn logprobs_agree_between_whole_and_streamed_answers_on_both_endpoints() {
    let gw = TestGateway::start_demo();
    let extra = json!({"logprobs": true, "top_logprobs": 5, "temperature": 0, "max_tokens": 12});
    let (status, body) = gw
        .post(
            "/v1/chat/completions",
            chat("Name a colour.", extra.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(
        content.len() as u64,
        body["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let mut text = String::new();
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        let best = top
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        // Greedy: the chosen token is the most likely, and its logprob the maximum.
        assert_eq!(entry["logprob"].as_f64().unwrap(), best);
        assert_eq!(entry["token"], top[0]["token"]);
        let bytes: Vec<u8> = serde_json::from_value(entry["bytes"].clone()).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            entry["token"].as_str().unwrap()
        );
        text.push_str(entry["token"].as_str().unwrap());
    }
    let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with(answer), "{text:?} vs {answer:?}");
    let total =
        |entries: &[Value]| -> f64 { entries.iter().map(|e| e["logprob"].as_f64().unwrap()).sum() };
    let mut body_stream = chat("Name a colour.", extra);
    body_stream["stream"] = json!(true);
    let events = gw.stream("/v1/chat/completions", body_stream).await;
    let streamed: Vec<Value> = events
        .iter()
        .filter_map(|e| e["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(streamed.len(), content.len());
    assert!((total(&streamed) - total(content)).abs() < 1e-4);
    // The completions endpoint's shape: tokens, token_logprobs, top_logprobs, text_offset.
    let (status, body) = gw
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "The capital of France is", "logprobs": 3, "temperature": 0, "max_tokens": 6}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let lp = &body["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 6);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 6);
    let offsets: Vec<u64> = serde_json::from_value(lp["text_offset"].clone()).unwrap();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3);
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert_eq!(lp["token_logprobs"][i].as_f64().unwrap(), best);
    }
}

#[tokio::test]
async fn n_greedy_choices_are_identical_and_indexed() {
    let gw = TestGateway::start_demo();
    let (status, body) = gw
        .post(
            "/v1/chat/completions",
            chat(
                "Tell me a fact.",
                json!({"n": 4, "temperature": 0, "max_tokens": 16}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    let texts: Vec<&str> = choices
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap())
        .collect();
    assert!(
        texts.iter().all(|t| *t == texts[0] && !t.is_empty()),
        "{texts:?}"
    );
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
    // Usage counts every choice's tokens, and the prompt once (as OpenAI bills `n`).
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 64);
    let (_, single) = gw
        .post(
            "/v1/chat/completions",
            chat(
                "Tell me a fact.",
                json!({"temperature": 0, "max_tokens": 16}),
            ),
        )
        .await;
    assert_eq!(usage["prompt_tokens"], single["usage"]["prompt_tokens"]);
    assert_eq!(
        single["choices"][0]["message"]["content"].as_str().unwrap(),
        texts[0]
    );
    // Completions: two prompts of two choices each, in OpenAI's order.
    let (status, body) = gw
        .post("/v1/completions", json!({"model": MODEL, "prompt": ["One", "Two"], "n": 2, "temperature": 0, "max_tokens": 4}))
        .await;
    assert_eq!(status, 200, "{body}");
    let texts: Vec<&str> = body["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 4);
    assert_eq!(texts[0], texts[1]);
    assert_eq!(texts[2], texts[3]);
}

#[tokio::test]
async fn the_official_openai_sdk_parses_and_calls_tools_unchanged() {
    let gw = TestGateway::start_demo();
    let seen = common::run_sdk_script("structured.py", &gw.base, &gw.key, MODEL).await;
    let medications = seen["medications"].as_array().unwrap();
    assert!((1..=2).contains(&medications.len()), "{seen}");
    assert!(["oral", "iv", "topical"].contains(&medications[0]["route"].as_str().unwrap()));
    assert_eq!(seen["tool_name"], "get_weather");
    assert_eq!(seen["finish_reason"], "tool_calls");
    assert_valid(
        &weather_tool()["function"]["parameters"],
        &seen["tool_arguments"].to_string(),
    );
    assert!(["stop", "length", "tool_calls"].contains(&seen["follow_up_finish"].as_str().unwrap()));
}

/// A gateway whose model is served only by a remote engine-worker on the real model: the
/// constraint, the log probabilities and the tool call travel to the upstream and back.
#[tokio::test]
async fn structured_output_logprobs_and_tools_pass_through_a_remote_pool() {
    let worker = TestGateway::start(common::Options {
        worker: true,
        ..common::Options::default()
    });
    let config = format!(
        r#"
[[tenants]]
id = "remote-user"
keys = ["{key}"]

[[pools]]
name = "workers"
kind = "remote"
urls = ["{url}"]
api_key_env = "WORKER_SECRET"

[[models]]
id = "{MODEL}"
pools = ["workers"]
"#,
        key = common::digest("sk-remote-user"),
        url = worker.base,
    );
    let mut gw = TestGateway::start(common::Options {
        config: Some(&config),
        model_flag: false,
        ..common::Options::default()
    });
    gw.key = "sk-remote-user".into();
    let schema = person_schema();
    for seed in [1, 2, 3] {
        let (status, body) = gw
            .post(
                "/v1/chat/completions",
                chat(
                    "Describe a person in JSON.",
                    json!({"response_format": json_schema_format(&schema), "temperature": 1.0, "seed": seed, "max_tokens": 300, "logprobs": true, "top_logprobs": 2}),
                ),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let choice = &body["choices"][0];
        assert_valid(&schema, choice["message"]["content"].as_str().unwrap());
        let content = choice["logprobs"]["content"].as_array().unwrap();
        assert!(!content.is_empty());
        assert!(content
            .iter()
            .all(|e| e["top_logprobs"].as_array().unwrap().len() == 2));
    }
    let (status, body) = gw
        .post(
            "/v1/chat/completions",
            chat(
                "Weather in Rome?",
                json!({"tools": [weather_tool()], "tool_choice": "required", "max_tokens": 100}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_valid(
        &weather_tool()["function"]["parameters"],
        call["function"]["arguments"].as_str().unwrap(),
    );
    // A bad schema is refused at the edge, before any upstream sees it.
    let (status, body) = gw
        .post(
            "/v1/chat/completions",
            chat("hi", json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("response_format"))
    );
}

/// `best_of`: of four sampled candidates, the two with the highest total log probability come
/// back, best first; all four are billed.
#[tokio::test]
async fn best_of_returns_the_most_likely_candidates() {
    let gw = TestGateway::start_demo();
    let body = |extra: Value| {
        let mut body = json!({"model": MODEL, "prompt": "Once upon a time", "temperature": 1.0, "seed": 42, "max_tokens": 8, "logprobs": 0});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let total = |choice: &Value| -> f64 {
        choice["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_f64().unwrap())
            .sum()
    };
    // The same four candidates, all returned (choice i is seeded `seed + i` either way).
    let (status, all) = gw.post("/v1/completions", body(json!({"n": 4}))).await;
    assert_eq!(status, 200, "{all}");
    let mut totals: Vec<f64> = all["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(total)
        .collect();
    totals.sort_by(|a, b| b.total_cmp(a));
    let (status, best) = gw
        .post("/v1/completions", body(json!({"n": 2, "best_of": 4})))
        .await;
    assert_eq!(status, 200, "{best}");
    let choices = best["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(
        (choices[0]["index"].as_u64(), choices[1]["index"].as_u64()),
        (Some(0), Some(1))
    );
    let kept: Vec<f64> = choices.iter().map(total).collect();
    assert!(
        (kept[0] - totals[0]).abs() < 1e-3 && (kept[1] - totals[1]).abs() < 1e-3,
        "{kept:?} vs {totals:?}"
    );
    assert_eq!(
        best["usage"]["completion_tokens"], all["usage"]["completion_tokens"],
        "every candidate is billed"
    );
    // Without `logprobs`, none are shown (the ranking needs them only inside).
    let mut quiet = body(json!({"n": 1, "best_of": 3}));
    quiet.as_object_mut().unwrap().remove("logprobs");
    let (status, one) = gw.post("/v1/completions", quiet).await;
    assert_eq!(status, 200, "{one}");
    assert!(one["choices"][0]["logprobs"].is_null());
    for (extra, why) in [
        (json!({"n": 3, "best_of": 2}), "below n"),
        (json!({"best_of": 2, "stream": true}), "streamed"),
        (json!({"best_of": 17}), "too many"),
    ] {
        let (status, err) = gw.post("/v1/completions", body(extra)).await;
        assert_eq!(
            (status, err["error"]["param"].as_str()),
            (400, Some("best_of")),
            "{why}: {err}"
        );
    }
}

//! Every kind of bad input gets its status and an OpenAI error body; the server keeps serving.

mod common;

use common::{Options, TestGateway, MODEL};
use serde_json::{json, Value};

fn assert_error(status: u16, body: &Value, expected_status: u16, param: Option<&str>, case: &str) {
    assert_eq!(status, expected_status, "{case}: {body}");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: {body}"
    );
    assert!(error["type"].is_string(), "{case}: {body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{case}: {body}"
    );
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{case}: {body}");
    }
}

#[tokio::test]
async fn bad_requests_get_openai_errors_and_the_server_survives() {
    let key = "sk-test-bad-input";
    let config = format!(
        r#"
        [server]
        max_body_bytes = 4096
        [[models]]
        id = "smollm2-135m-instruct"
        [[tenants]]
        id = "demo"
        keys = ["{}"]
        "#,
        common::digest(key)
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let chat = "/v1/chat/completions";
    let ok_messages = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("malformed JSON", "{\"model\": ".into(), 400, None),
        ("not an object", "[1, 2]".into(), 400, None),
        (
            "missing messages",
            json!({"model": MODEL}).to_string(),
            400,
            None,
        ),
        (
            "missing model",
            json!({"messages": ok_messages}).to_string(),
            400,
            None,
        ),
        (
            "messages wrong type",
            json!({"model": MODEL, "messages": "hi"}).to_string(),
            400,
            Some("messages"),
        ),
        (
            "temperature wrong type",
            json!({"model": MODEL, "messages": ok_messages, "temperature": "hot"}).to_string(),
            400,
            Some("temperature"),
        ),
        (
            "temperature out of range",
            json!({"model": MODEL, "messages": ok_messages, "temperature": 3}).to_string(),
            400,
            Some("temperature"),
        ),
        (
            "max_tokens zero",
            json!({"model": MODEL, "messages": ok_messages, "max_tokens": 0}).to_string(),
            400,
            Some("max_tokens"),
        ),
        (
            "max_tokens negative",
            json!({"model": MODEL, "messages": ok_messages, "max_tokens": -1}).to_string(),
            400,
            Some("max_tokens"),
        ),
        (
            "max_tokens beyond context",
            json!({"model": MODEL, "messages": ok_messages, "max_tokens": 100000}).to_string(),
            400,
            Some("max_tokens"),
        ),
        (
            "empty messages",
            json!({"model": MODEL, "messages": []}).to_string(),
            400,
            Some("messages"),
        ),
        (
            "unknown model",
            json!({"model": "gpt-17", "messages": ok_messages}).to_string(),
            404,
            Some("model"),
        ),
        (
            "body over the limit",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(5000)}]})
                .to_string(),
            413,
            None,
        ),
    ];
    for (case, body, status, param) in cases {
        let (got, body) = gw.post_raw(chat, body, Some(key)).await;
        assert_error(got, &body, status, param, case);
    }
    let (status, body) = gw
        .post_raw(
            "/v1/completions",
            json!({"model": MODEL, "prompt": [999999]}).to_string(),
            Some(key),
        )
        .await;
    assert_error(
        status,
        &body,
        400,
        Some("prompt"),
        "token id outside the vocabulary",
    );
    let (status, body) = gw
        .post_raw(
            "/v1/completions",
            json!({"model": MODEL}).to_string(),
            Some(key),
        )
        .await;
    assert_error(status, &body, 400, None, "missing prompt");

    // Unknown route and wrong method.
    let (status, body) = gw.get("/v2/nothing", Some(key)).await;
    assert_error(status, &body, 404, None, "unknown route");
    let (status, body) = gw.get(chat, Some(key)).await;
    assert_error(status, &body, 405, None, "wrong method");

    // Unknown extra fields are ignored, and the server still answers.
    let (status, body) = gw
        .post_raw(chat, json!({"model": MODEL, "messages": ok_messages, "max_tokens": 2, "frobnicate": {"x": 1}}).to_string(), Some(key))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn keys_and_model_allow_lists_are_enforced() {
    let lab = common::digest("sk-lab-key");
    let clinic = common::digest("sk-clinic-key");
    let config = format!(
        r#"
        [[models]]
        id = "smollm2-135m-instruct"
        [[tenants]]
        id = "lab"
        keys = ["{lab}"]
        models = ["*"]
        [[tenants]]
        id = "clinic"
        keys = ["{clinic}"]
        models = ["some-other-model"]
        "#
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
            .to_string();
    let chat = "/v1/chat/completions";

    let (status, err) = gw.post_raw(chat, body.clone(), None).await;
    assert_error(status, &err, 401, None, "no key");
    assert_eq!(err["error"]["type"], "authentication_error");
    let (status, err) = gw.post_raw(chat, body.clone(), Some("sk-wrong")).await;
    assert_error(status, &err, 401, None, "wrong key");
    assert!(
        !err.to_string().contains("sk-wrong"),
        "errors never echo keys"
    );
    let (status, _) = gw.post_raw(chat, body.clone(), Some("sk-lab-key")).await;
    assert_eq!(status, 200);
    // A model outside the allow-list is answered exactly as one that does not exist (issue
    // 30, item 7): no oracle of which models exist for other tenants.
    let (status, err) = gw.post_raw(chat, body, Some("sk-clinic-key")).await;
    assert_error(
        status,
        &err,
        404,
        Some("model"),
        "model outside the allow-list",
    );
    assert_eq!(err["error"]["code"], "model_not_found");
    let unknown = json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    let (unknown_status, unknown_err) = gw
        .post_raw(chat, unknown.to_string(), Some("sk-clinic-key"))
        .await;
    assert_eq!(unknown_status, status);
    let without_name = |e: &Value, name: &str| {
        let mut e = e.clone();
        let message = e["error"]["message"].as_str().unwrap().replace(name, "M");
        e["error"]["message"] = message.into();
        e
    };
    assert_eq!(
        without_name(&err, MODEL),
        without_name(&unknown_err, "no-such-model"),
        "allowed-out and unknown models answer alike"
    );
    // The clinic sees no models it cannot use.
    let (_, models) = gw.get("/v1/models", Some("sk-clinic-key")).await;
    assert_eq!(models["data"], json!([]));
}

/// Requests sized to exhaust the server (issue 14, item 5): 100,000 one-token prompts used to
/// grow the gateway by 400 MB and keep the engine busy for minutes. The number of prompts and
/// the prompt tokens of one request are bounded, and refused before any work.
#[tokio::test]
async fn prompts_per_request_and_prompt_tokens_per_request_are_bounded() {
    let key = "sk-test-many-prompts";
    let config = format!(
        "[server]\nmax_prompts_per_request = 4\nmax_prompt_tokens_per_request = 20\n\
         [[models]]\nid = \"bench\"\nkind = \"synthetic\"\n[models.synthetic]\ntokens_per_second = 0\n\
         [[tenants]]\nid = \"t\"\nkeys = [\"{}\"]\n",
        common::digest(key)
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    });
    let post = |prompt: Value| {
        let body = json!({"model": "bench", "prompt": prompt, "max_tokens": 1}).to_string();
        let gw = &gw;
        async move { gw.post_raw("/v1/completions", body, Some(key)).await }
    };
    let many: Vec<Vec<u32>> = (0..100_000).map(|_| vec![1]).collect();
    let (status, body) = post(json!(many)).await;
    assert_error(status, &body, 400, Some("prompt"), "100,000 prompts");
    let (status, body) = post(json!(["a", "b", "c", "d", "e"])).await;
    assert_error(status, &body, 400, Some("prompt"), "5 prompts");
    let ten_words = "one two three four five six seven eight nine ten";
    let (status, body) = post(json!([ten_words, ten_words, ten_words])).await;
    assert_error(status, &body, 400, Some("prompt"), "30 prompt tokens");
    let (status, body) = post(json!([ten_words, "one two"])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"].as_array().unwrap().len(), 2);
}

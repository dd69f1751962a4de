//! `POST /v1/embeddings` end to end: the real gateway with the real all-MiniLM-L6-v2, its
//! vectors against the independent reference (local_engine/tests/fixtures), OpenAI's input shapes
//! and `encoding_format`, clear 400s, quotas and the ledger.

mod common;

use base64::Engine as _;
use common::{digest, Options, TestGateway};
use serde_json::{json, Value};

const MODEL: &str = "all-minilm-l6-v2";
const ADMIN: &str = "sk-embed-admin";

fn gateway(tenant_extra: &str) -> TestGateway {
    let config = format!(
        "admin_keys = [\"{}\"]\n[[models]]\nid = \"{MODEL}\"\nkind = \"embedding\"\n\
         [[tenants]]\nid = \"rag\"\nkeys = [\"{}\"]\n{tenant_extra}\n",
        digest(ADMIN),
        digest("sk-rag")
    );
    TestGateway::start(Options {
        config: Some(&config),
        model_flag: false,
        ..Options::default()
    })
}

async fn embed(gw: &TestGateway, body: Value) -> (u16, Value) {
    let response = gw
        .client()
        .post(gw.url("/v1/embeddings"))
        .bearer_auth("sk-rag")
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn reference() -> Vec<(String, Vec<u32>, Vec<f32>)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../embeddings/tests/fixtures/minilm-reference.json"
    );
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["text"].as_str().unwrap().to_string(),
                serde_json::from_value(c["token_ids"].clone()).unwrap(),
                serde_json::from_value(c["embedding"].clone()).unwrap(),
            )
        })
        .collect()
}

fn vector(item: &Value) -> Vec<f32> {
    serde_json::from_value(item["embedding"].clone()).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[tokio::test]
async fn texts_and_token_ids_embed_like_the_reference_and_are_billed() {
    let gw = gateway("");
    let cases = reference();
    let texts: Vec<&str> = cases.iter().map(|(t, _, _)| t.as_str()).collect();
    let (status, body) = embed(&gw, json!({"model": MODEL, "input": texts})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], MODEL);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), cases.len());
    for (i, (item, (text, _, expected))) in data.iter().zip(&cases).enumerate() {
        assert_eq!(item["index"], i);
        assert_eq!(item["object"], "embedding");
        let similarity = cosine(&vector(item), expected);
        assert!(similarity >= 0.999, "{text}: cosine {similarity}");
    }
    let tokens: usize = cases.iter().map(|(_, ids, _)| ids.len()).sum();
    assert_eq!(body["usage"]["prompt_tokens"], tokens);
    assert_eq!(body["usage"]["total_tokens"], tokens);

    // Token ids give the text's vector; base64 carries the same floats.
    let (text, ids, _) = &cases[0];
    let (_, by_text) = embed(&gw, json!({"model": MODEL, "input": text})).await;
    let (_, by_ids) = embed(
        &gw,
        json!({"model": MODEL, "input": ids, "dimensions": 384}),
    )
    .await;
    let (_, encoded) = embed(
        &gw,
        json!({"model": MODEL, "input": [text], "encoding_format": "base64"}),
    )
    .await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let (a, b) = (vector(&by_text["data"][0]), vector(&by_ids["data"][0]));
    assert_eq!(a.len(), 384);
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-5));
    assert!(a.iter().zip(&decoded).all(|(x, y)| (x - y).abs() <= 1e-5));

    // The ledger has every request, with its tokens.
    let (status, usage) = gw.get("/admin/usage?tenant=rag", Some(ADMIN)).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["data"][0]["requests"], 4);
    let billed = tokens + 3 * ids.len();
    assert_eq!(usage["data"][0]["prompt_tokens"], billed);
    assert_eq!(usage["data"][0]["completion_tokens"], 0);
}

#[tokio::test]
async fn what_the_model_cannot_do_is_a_clear_400_and_quotas_apply() {
    let gw = gateway("tokens_per_minute = 40");
    for (body, param, code) in [
        (json!({"model": MODEL, "input": []}), "input", Value::Null),
        (json!({"model": MODEL, "input": ""}), "input", Value::Null),
        (
            json!({"model": MODEL, "input": vec![1000; 513]}),
            "input",
            json!("context_length_exceeded"),
        ),
        (
            json!({"model": MODEL, "input": [101, 99999, 102]}),
            "input",
            json!("invalid_value"),
        ),
        (
            json!({"model": MODEL, "input": "a", "dimensions": 256}),
            "dimensions",
            Value::Null,
        ),
        (
            json!({"model": MODEL, "input": "a", "encoding_format": "hex"}),
            "encoding_format",
            Value::Null,
        ),
    ] {
        let (status, error) = embed(&gw, body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
        if !code.is_null() {
            assert_eq!(error["error"]["code"], code, "{body}: {error}");
        }
    }
    let (status, error) = embed(&gw, json!({"model": "nope", "input": "a"})).await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (404, &json!("model_not_found"))
    );
    let (status, models) = gw.get("/v1/models", Some("sk-rag")).await;
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], MODEL);

    // 40 tokens a minute: three inputs of 12 fit, the fourth does not.
    let sentence = "A quick brown fox jumps over the lazy dog.";
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            embed(&gw, json!({"model": MODEL, "input": sentence}))
                .await
                .0,
        );
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
}

#[tokio::test]
async fn the_official_openai_sdk_works_unchanged() {
    let gw = gateway("");
    let seen = common::run_sdk_script("embeddings.py", &gw.base, "sk-rag", MODEL).await;
    assert_eq!(seen["count"], 2);
    assert_eq!(seen["indexes"], json!([0, 1]));
    assert_eq!(seen["dimensions"], 384);
    assert_eq!(seen["model"], MODEL);
    assert!(seen["prompt_tokens"].as_u64().unwrap() > 3);
    // The SDK's default (base64, decoded by it) and explicit floats agree.
    let default: Vec<f32> = serde_json::from_value(seen["hi_default"].clone()).unwrap();
    let float: Vec<f32> = serde_json::from_value(seen["hi_float"].clone()).unwrap();
    assert!(default
        .iter()
        .zip(&float)
        .all(|(a, b)| (a - b).abs() <= 1e-5));
    let hi = &reference()[4];
    assert_eq!(hi.0, "Hi");
    assert!(cosine(&float, &hi.2) >= 0.999);
}

/// An embedding model on a remote pool: an engine-worker's `/v1/embeddings` (the same model)
/// serves it, the first replica being dead (the request passes to the next), the vectors match
/// the reference, and the record bills the upstream's token count.
#[tokio::test]
async fn a_remote_pool_serves_embeddings_through_an_engine_worker() {
    let worker = TestGateway::start(Options {
        worker: true,
        ..Options::default()
    });
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let config = format!(
        "admin_keys = [\"{}\"]\n[[pools]]\nname = \"workers\"\nkind = \"remote\"\nurls = [\"{dead}\", \"{}\"]\n\
         api_key_env = \"WORKER_SECRET\"\n[[models]]\nid = \"{MODEL}\"\nkind = \"embedding\"\npools = [\"workers\"]\n\
         [[tenants]]\nid = \"rag\"\nkeys = [\"{}\"]\n",
        digest(ADMIN),
        worker.base,
        digest("sk-rag")
    );
    let gw = TestGateway::start(Options {
        config: Some(&config),
        model_flag: false,
        ..Options::default()
    });
    let cases = reference();
    let texts: Vec<&str> = cases.iter().map(|(t, _, _)| t.as_str()).collect();
    let local_tokens: usize = cases.iter().map(|(_, ids, _)| ids.len()).sum();
    for _ in 0..2 {
        // Twice: round robin starts once on the dead replica, once on the live one.
        let (status, body) = embed(&gw, json!({"model": MODEL, "input": texts})).await;
        assert_eq!(status, 200, "{body}");
        for ((_, _, expected), item) in cases.iter().zip(body["data"].as_array().unwrap()) {
            assert!(cosine(&vector(item), expected) >= 0.999);
        }
        assert_eq!(
            body["usage"]["prompt_tokens"], local_tokens,
            "the upstream's count"
        );
    }
    // base64 is encoded by the gateway from the upstream's floats.
    let (status, body) = embed(
        &gw,
        json!({"model": MODEL, "input": "Hi", "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes.len(), 384 * 4);
    // The upstream's refusal is the client's 400, and charges nothing.
    let (status, body) = embed(&gw, json!({"model": MODEL, "input": [[1, 2, 99999999]]})).await;
    assert_eq!(status, 400, "{body}");
    let (status, usage) = gw.get("/admin/usage", Some(ADMIN)).await;
    assert_eq!(status, 200);
    let rows = usage["data"].as_array().unwrap();
    let tokens: u64 = rows
        .iter()
        .map(|r| r["prompt_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(tokens, 2 * local_tokens as u64 + 3, "{usage}");
}

//! LoRA adapters named as a request's model, through the real gateway and model: an adapter
//! of the default model (written here in llama.cpp's GGUF adapter format, random low-rank
//! weights) changes the answer, is named by its id or as `<model>:<id>`, is listed only to the
//! tenants that may use it (another tenant's is a model that does not exist), and its usage is
//! recorded against the model with the adapter named; a file that is no adapter for the model
//! is the request's 400.

mod common;

use std::path::Path;

use common::lora::{ask, text, write_adapter};
use common::{call, digest, Options, TestGateway, MODEL};
use serde_json::{json, Value};

const ADMIN: &str = "sk-adapters-admin";
const ACME: &str = "sk-adapters-acme";
const BETA: &str = "sk-adapters-beta";

fn gateway(dir: &Path) -> TestGateway {
    write_adapter(&dir.join("tone.gguf"), 1);
    write_adapter(&dir.join("shared.gguf"), 2);
    std::fs::write(dir.join("broken.gguf"), b"GGUF but not really").unwrap();
    let config = format!(
        "admin_keys = [\"{}\"]\n\
         [[models]]\nid = \"{MODEL}\"\n\
         [[adapters]]\nid = \"acme-tone\"\nmodel = \"{MODEL}\"\npath = \"{}\"\ntenant = \"acme\"\n\
         [[adapters]]\nid = \"shared-tone\"\nmodel = \"{MODEL}\"\npath = \"{}\"\n\
         [[adapters]]\nid = \"broken\"\nmodel = \"{MODEL}\"\npath = \"{}\"\ntenant = \"acme\"\n\
         [[tenants]]\nid = \"acme\"\nkeys = [\"{}\"]\n[[tenants]]\nid = \"beta\"\nkeys = [\"{}\"]\n",
        digest(ADMIN),
        dir.join("tone.gguf").display(),
        dir.join("shared.gguf").display(),
        dir.join("broken.gguf").display(),
        digest(ACME),
        digest(BETA),
    );
    TestGateway::start(Options {
        config: Some(&config),
        ..Options::default()
    })
}

async fn listed(gw: &TestGateway, key: &str) -> Vec<(String, Value)> {
    let (status, list) = call(gw, "GET", "/v1/models", key, None).await;
    assert_eq!(status, 200, "{list}");
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap().to_string(), m["parent"].clone()))
        .collect()
}

#[tokio::test]
async fn a_tenants_adapter_changes_its_answers_and_is_nobody_elses() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());

    // Listed to those who may use them, with the model they adapt.
    let acme = listed(&gw, ACME).await;
    assert!(
        acme.contains(&("acme-tone".into(), json!(MODEL))),
        "{acme:?}"
    );
    assert!(
        acme.contains(&("shared-tone".into(), json!(MODEL))),
        "{acme:?}"
    );
    let beta = listed(&gw, BETA).await;
    assert!(!beta.iter().any(|(id, _)| id == "acme-tone"), "{beta:?}");
    assert!(beta.iter().any(|(id, _)| id == "shared-tone"), "{beta:?}");
    assert_eq!(
        call(&gw, "GET", "/v1/models/acme-tone", ACME, None).await.0,
        200
    );
    assert_eq!(
        call(&gw, "GET", "/v1/models/acme-tone", BETA, None).await.0,
        404
    );

    // The adapter changes the answer; both of its names give the same one.
    let (status, base) = ask(&gw, ACME, MODEL).await;
    assert_eq!(status, 200, "{base}");
    let (status, tuned) = ask(&gw, ACME, "acme-tone").await;
    assert_eq!(status, 200, "{tuned}");
    assert_eq!(tuned["model"], "acme-tone");
    assert_ne!(text(&tuned), text(&base), "the adapter changed nothing");
    let (status, long_name) = ask(&gw, ACME, &format!("{MODEL}:acme-tone")).await;
    assert_eq!(status, 200, "{long_name}");
    assert_eq!(text(&long_name), text(&tuned));

    // Another tenant's adapter does not exist for beta, by either name; the shared one does.
    for name in ["acme-tone".to_string(), format!("{MODEL}:acme-tone")] {
        let (status, body) = ask(&gw, BETA, &name).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "model_not_found", "{body}");
    }
    let (status, shared) = ask(&gw, BETA, "shared-tone").await;
    assert_eq!(status, 200, "{shared}");
    assert_ne!(text(&shared), text(&tuned));

    // A file that is no adapter for the model: the request's fault, named.
    let (status, body) = ask(&gw, ACME, "broken").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broken"),
        "{body}"
    );
    assert_eq!(
        ask(&gw, ACME, MODEL).await.0,
        200,
        "the replica still serves"
    );

    // The ledger bills the model and names the adapter.
    let (_, records) = call(&gw, "GET", "/admin/usage/records?tenant=acme", ADMIN, None).await;
    let adapted: Vec<&Value> = records["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["adapter"] == "acme-tone")
        .collect();
    assert_eq!(adapted.len(), 2, "{records}");
    assert!(adapted.iter().all(|r| r["model"] == MODEL), "{records}");

    // Requests and tokens per adapter in the request series (`model` is the name used).
    let metrics = gw.client().get(gw.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let series = |prefix: &str| {
        metrics.lines().any(|l| {
            l.starts_with(prefix)
                && l.contains("tenant=\"acme\"")
                && l.contains("model=\"acme-tone\"")
        })
    };
    assert!(series("gateway_requests_total"), "{metrics}");
    assert!(series("gateway_completion_tokens_total"), "{metrics}");
    // Loaded where they were used (the broken one never loaded).
    let loaded = |adapter: &str| {
        metrics.contains(&format!(
            "gateway_adapter_loaded{{model=\"{MODEL}\",adapter=\"{adapter}\"}} 1"
        ))
    };
    assert!(loaded("acme-tone") && loaded("shared-tone"), "{metrics}");
    assert!(!metrics.contains("adapter=\"broken\""), "{metrics}");
}

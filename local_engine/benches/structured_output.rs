//! What structured output costs per token: 16 streams decoding together on the real
//! SmolLM2-135M-Instruct, free text against a JSON schema, in alternating rounds.
//!
//! `cargo bench -p local_engine --bench structured_output`. Every request generates exactly
//! `TOKENS` tokens (free text ignores the end-of-sequence token; the schema, an array of at
//! least 64 records, cannot be complete before `TOKENS`), so both arms run the same batch
//! shape and differ only in the grammar's mask and the logits' copy to the host. Prints each
//! arm's median generated tokens per second, and the cost per token of the schema.

use std::sync::Arc;
use std::time::Instant;

use engine_api::{
    ChatMessage, Engine, GenerationRequest, OutputConstraint, Prompt, SamplingParams,
};
use local_engine::{CoreConfig, LocalEngine, LocalEngineOptions};
use model_fetch::{default_cache_dir, ensure_model, DEFAULT_MODEL};
use structured_output::ConstraintState;

const STREAMS: usize = 16;
const TOKENS: usize = 96;
const ROUNDS: usize = 4;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn schema() -> serde_json::Value {
    serde_json::json!({
        "type": "array",
        "minItems": 64,
        "items": {
            "type": "object",
            "properties": {
                "patient": {"type": "string", "maxLength": 24},
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "triage": {"enum": ["red", "orange", "yellow", "green"]},
                "allergies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3}
            },
            "required": ["patient", "age", "triage", "allergies"],
            "additionalProperties": false
        }
    })
}

/// One round: `STREAMS` requests at once; returns generated tokens per second (and, for the
/// schema arm, the first output's token ids, replayed below).
fn round(engine: &LocalEngine, constraint: Option<&Arc<OutputConstraint>>, round: usize) -> f64 {
    round_with_output(engine, constraint, round).0
}

fn round_with_output(
    engine: &LocalEngine,
    constraint: Option<&Arc<OutputConstraint>>,
    round: usize,
) -> (f64, Vec<u32>) {
    let requests = (0..STREAMS)
        .map(|i| {
            let params = SamplingParams {
                temperature: 1.0,
                seed: Some((round * STREAMS + i) as u64),
                max_tokens: TOKENS,
                ignore_eos: constraint.is_none(),
                constraint: constraint.cloned(),
                ..SamplingParams::default()
            };
            let prompt = Prompt::Chat(vec![ChatMessage::new(
                "user",
                "List the patients in the emergency room as JSON.",
            )]);
            GenerationRequest::new(prompt, params, policies::TenantId::new("bench").unwrap())
        })
        .collect();
    let started = Instant::now();
    let streams = engine.submit_all(requests).unwrap();
    let mut tokens = 0;
    let mut first = None;
    for stream in streams {
        let out = stream.blocking_collect().unwrap();
        assert_eq!(out.token_ids.len(), TOKENS, "every request runs to TOKENS");
        tokens += out.token_ids.len();
        first.get_or_insert(out.token_ids);
    }
    (
        tokens as f64 / started.elapsed().as_secs_f64(),
        first.unwrap_or_default(),
    )
}

/// The grammar's own work per token, alone on one thread: a generated output's tokens replayed
/// through a fresh matcher (mask, then the token), as the scheduler does while sampling.
fn mask_cost_per_token(engine: &LocalEngine, constraint: &OutputConstraint, tokens: &[u32]) -> f64 {
    let grammars = &engine.model().grammars;
    let logits = vec![0.0f32; engine.info().vocab_size];
    let mut times = Vec::new();
    for _ in 0..5 {
        let mut state = ConstraintState::new(grammars.matcher(constraint).unwrap());
        let started = Instant::now();
        for &token in tokens {
            std::hint::black_box(state.mask(&logits).unwrap());
            state.advance(token).unwrap();
        }
        times.push(started.elapsed().as_secs_f64() / tokens.len() as f64);
    }
    median(times)
}

fn main() {
    let path = ensure_model(&DEFAULT_MODEL, &default_cache_dir()).expect("model");
    let engine = LocalEngine::start(
        "smollm2",
        &LocalEngineOptions {
            model_path: path,
            device: local_engine::DeviceSpec::Cpu,
            weight_format: local_engine::WeightFormat::AsStored,
            core: CoreConfig::default(),
        },
    )
    .unwrap();
    let constraint = Arc::new(OutputConstraint::JsonSchema(schema()));
    println!(
        "{STREAMS} streams x {TOKENS} tokens, {ROUNDS} alternating rounds after a warm-up, cpu kernels {}",
        local_engine::cpu_kernels()
    );
    round(&engine, None, 0);
    let (_, replay) = round_with_output(&engine, Some(&constraint), 0);
    let (mut free, mut schema) = (Vec::new(), Vec::new());
    for r in 1..=ROUNDS {
        // Each arm goes first in every other round, so that neither always meets the
        // other's leftovers (caches, allocator, frequency).
        if r % 2 == 1 {
            free.push(round(&engine, None, r));
            schema.push(round(&engine, Some(&constraint), r));
        } else {
            schema.push(round(&engine, Some(&constraint), r));
            free.push(round(&engine, None, r));
        }
        println!(
            "round {r}: free text {:.1} tok/s, JSON schema {:.1} tok/s",
            free[r - 1],
            schema[r - 1]
        );
    }
    let (free, schema) = (median(free), median(schema));
    println!(
        "median: free text {free:.1} tok/s ({:.3} ms/token), JSON schema {schema:.1} tok/s ({:.3} ms/token): {:+.1}% per token",
        1e3 / free,
        1e3 / schema,
        (free / schema - 1.0) * 100.0
    );
    let mask = mask_cost_per_token(&engine, &constraint, &replay);
    println!(
        "grammar work per token, one thread: {:.1} us (mask over {} ids and advance), {:.1}% of the free-text time per token at {STREAMS} streams",
        mask * 1e6,
        engine.info().vocab_size,
        mask * free * 100.0
    );
}

//! The continuous-batching request core on the real model. Deterministic: assertions count
//! steps and tokens from the core's step records; nothing sleeps or times.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use engine_api::CollectedOutput;
use engine_api::{
    Engine, EngineCounters, EngineError, FinishReason, GenerationRequest, Prompt, SamplingParams,
    TokenEvent,
};
use local_engine::text::ChatMessage;
use local_engine::CoreConfig;
use local_engine::{DeviceSpec, LocalEngine, StepRecord};
use local_engine::{LoadedModel, ModelFile};
use model_fetch::{default_cache_dir, ensure_model, DEFAULT_MODEL};
use policies::{Priority, Share};

fn model() -> Arc<LoadedModel> {
    static MODEL: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = ensure_model(&DEFAULT_MODEL, &default_cache_dir()).expect("model fetch");
            Arc::new(
                LoadedModel::load(&ModelFile {
                    path,
                    device: DeviceSpec::Cpu,
                    weight_format: Default::default(),
                })
                .expect("model load"),
            )
        })
        .clone()
}

fn engine(config: CoreConfig) -> LocalEngine {
    LocalEngine::with_model(
        "smollm2",
        model(),
        &CoreConfig {
            record_steps: true,
            ..config
        },
    )
    .unwrap()
}

fn chat(question: &str, max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        project_share: None,
        prompt: Prompt::Chat(vec![ChatMessage::new("user", question)]),
        params: SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(max_tokens)
        },
        tenant: "t".parse().unwrap(),
        share: Share::default(),
        traceparent: None,
        cache_scope: None,
        adapter: None,
    }
}

const QUESTIONS: [&str; 8] = [
    "Hi",
    "What is the capital of France? Answer in one word.",
    "Write a haiku about the sea.",
    "Explain photosynthesis to a child in two sentences.",
    "List five fruits that are red, and say one thing about each of them.",
    "Why is the sky blue?",
    "Translate to French: good morning, my friend. How have you been since we last met at the market?",
    "Tell me a story about a robot who learns to paint, with a happy ending and a lesson.",
];

/// Each request run alone through a fresh engine without a prefix cache: the single-sequence
/// reference (the engines under test have the cache on, so every comparison with it also
/// checks that cache hits change nothing).
fn solo(requests: &[GenerationRequest]) -> Vec<Vec<u32>> {
    let reference = engine(CoreConfig {
        prefix_cache: false,
        ..CoreConfig::default()
    });
    requests
        .iter()
        .map(|r| {
            reference
                .submit(r.clone())
                .unwrap()
                .blocking_collect()
                .unwrap()
                .token_ids
        })
        .collect()
}

/// Submits every request at once and reads each stream to its end.
fn run_together(engine: &LocalEngine, requests: &[GenerationRequest]) -> Vec<CollectedOutput> {
    engine
        .submit_all(requests.to_vec())
        .unwrap()
        .into_iter()
        .map(|s| s.blocking_collect().unwrap())
        .collect()
}

/// Submits each request and reads its first token: returns the streams, every one of them
/// decoding now, and those first tokens.
fn submit_until_decoding(
    engine: &LocalEngine,
    requests: &[GenerationRequest],
) -> (Vec<engine_api::TokenStream>, Vec<u32>) {
    let mut streams: Vec<_> = requests
        .iter()
        .map(|r| engine.submit(r.clone()).unwrap())
        .collect();
    let firsts = streams
        .iter_mut()
        .map(|s| match s.blocking_next() {
            Some(TokenEvent::Token { id, .. }) => id,
            other => panic!("expected a token, got {other:?}"),
        })
        .collect();
    (streams, firsts)
}

/// Each stream's token ids: its first token (already read) followed by the rest.
fn finish_after_first(streams: Vec<engine_api::TokenStream>, firsts: Vec<u32>) -> Vec<Vec<u32>> {
    streams
        .into_iter()
        .zip(firsts)
        .map(|(s, first)| {
            let mut ids = vec![first];
            ids.extend(s.blocking_collect().unwrap().token_ids);
            ids
        })
        .collect()
}

/// Prompt (and recompute) tokens run over `records`.
fn prefill_tokens(records: &[StepRecord]) -> usize {
    records
        .iter()
        .flat_map(|r| &r.chunks)
        .filter(|c| c.prefill)
        .map(|c| c.tokens)
        .sum()
}

/// Step records until the core is idle (it publishes the last one after the final tokens).
fn records_until_idle(engine: &LocalEngine) -> Vec<StepRecord> {
    let mut records = Vec::new();
    for _ in 0..10_000 {
        records.extend(engine.step_records());
        if records
            .last()
            .is_some_and(|r| r.running == 0 && r.waiting == 0)
        {
            return records;
        }
        std::thread::yield_now();
    }
    panic!("the core never became idle");
}

#[test]
fn batched_greedy_output_equals_solo_output() {
    let requests: Vec<_> = QUESTIONS.iter().map(|q| chat(q, 24)).collect();
    let expected = solo(&requests);
    let engine = engine(CoreConfig::default());
    let outputs = run_together(&engine, &requests);
    for (i, (out, want)) in outputs.iter().zip(&expected).enumerate() {
        assert_eq!(&out.token_ids, want, "prompt {i}: {:?}", QUESTIONS[i]);
        assert_eq!(out.completion.finish_reason, FinishReason::Length);
    }
    // They really ran together: some step decoded all eight at once.
    let records = records_until_idle(&engine);
    assert!(records
        .iter()
        .any(|r| r.chunks.iter().filter(|c| !c.prefill).count() == 8));
    assert_eq!(
        records.last().unwrap().free_blocks,
        EngineCounters::get(&engine.counters().kv_blocks_total) as usize
    );
}

#[test]
fn a_long_prompt_is_chunked_while_others_keep_decoding() {
    let config = CoreConfig {
        prefill_chunk: 256,
        max_batch_tokens: 512,
        ..CoreConfig::default()
    };
    let engine = engine(config);
    let short: Vec<_> = QUESTIONS[..4].iter().map(|q| chat(q, 40)).collect();
    let long_text = "The quick brown fox jumps over the lazy dog. ".repeat(150);
    let long_ids = model().tokenizer.encode(&long_text).unwrap()[..1500].to_vec();
    let long = GenerationRequest {
        project_share: None,
        prompt: Prompt::Tokens(long_ids),
        params: SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(8)
        },
        tenant: "t".parse().unwrap(),
        share: Share::default(),
        traceparent: None,
        cache_scope: None,
        adapter: None,
    };
    let mut streams: Vec<_> = short
        .iter()
        .map(|r| engine.submit(r.clone()).unwrap())
        .collect();
    // Wait until all four are decoding (each has produced its first token).
    let mut first_tokens = Vec::new();
    for s in &mut streams {
        match s.blocking_next() {
            Some(TokenEvent::Token { id, .. }) => first_tokens.push(id),
            other => panic!("expected a token, got {other:?}"),
        }
    }
    let long_stream = engine.submit(long.clone()).unwrap();
    let long_id = long_stream.id;
    let short_ids: Vec<u64> = streams.iter().map(|s| s.id).collect();
    let long_out = long_stream.blocking_collect().unwrap();
    let short_out = finish_after_first(streams, first_tokens);

    let records = records_until_idle(&engine);
    let long_chunks: Vec<_> = records
        .iter()
        .filter_map(|r| {
            r.chunks
                .iter()
                .find(|c| c.sequence == long_id && c.prefill)
                .map(|c| (r, c.tokens))
        })
        .collect();
    assert_eq!(long_chunks.iter().map(|(_, n)| n).sum::<usize>(), 1500);
    assert!(
        long_chunks.len() >= 6,
        "1500 tokens in chunks of at most 256"
    );
    assert!(long_chunks.iter().all(|(_, n)| *n <= 256));
    // In every step that carried a chunk of the long prompt, each short request still running
    // got its decode token.
    let mut ended: HashSet<u64> = HashSet::new();
    let mut checked = 0;
    for r in &records {
        if r.chunks.iter().any(|c| c.sequence == long_id && c.prefill) {
            for id in short_ids.iter().filter(|id| !ended.contains(id)) {
                let chunk = r
                    .chunks
                    .iter()
                    .find(|c| c.sequence == *id)
                    .expect("decode kept flowing");
                assert_eq!((chunk.tokens, chunk.prefill), (1, false));
                checked += 1;
            }
        }
        ended.extend(&r.ended);
    }
    assert!(checked >= 4, "the long prompt overlapped the decodes");
    // And nobody's output changed.
    let mut expected = solo(&short);
    expected.push(solo(&[long])[0].clone());
    assert_eq!(&short_out[..], &expected[..4]);
    assert_eq!(long_out.token_ids, expected[4]);
}

#[test]
fn more_requests_than_the_pool_holds_all_complete_with_preemption() {
    // 256 positions = 16 blocks; each request needs ~4-6 blocks at its full length.
    let config = CoreConfig {
        kv_cache_tokens: Some(256),
        ..CoreConfig::default()
    };
    let engine = engine(config);
    let total_blocks = EngineCounters::get(&engine.counters().kv_blocks_total) as usize;
    assert_eq!(total_blocks, 16);
    let requests: Vec<_> = QUESTIONS
        .iter()
        .cycle()
        .take(10)
        .map(|q| chat(q, 40))
        .collect();
    let outputs = run_together(&engine, &requests);
    let records = records_until_idle(&engine);
    assert!(
        records.iter().any(|r| !r.preempted.is_empty()),
        "the pool was too small not to preempt"
    );
    assert!(EngineCounters::get(&engine.counters().preemptions) > 0);
    assert!(
        EngineCounters::get(&engine.counters().prefix_hit_tokens) > 0,
        "repeated questions found their prompts cached"
    );
    assert_eq!(
        records.last().unwrap().free_blocks,
        total_blocks,
        "every block came back"
    );
    assert!(records.iter().all(|r| r.free_blocks <= total_blocks));
    let expected = solo(&requests);
    for (i, (out, want)) in outputs.iter().zip(&expected).enumerate() {
        assert_eq!(&out.token_ids, want, "request {i}");
    }
}

#[test]
fn cancelling_half_of_sixteen_frees_their_blocks() {
    let engine = engine(CoreConfig {
        kv_cache_tokens: Some(4096),
        ..CoreConfig::default()
    });
    let total_blocks = EngineCounters::get(&engine.counters().kv_blocks_total) as usize;
    let requests: Vec<_> = QUESTIONS
        .iter()
        .cycle()
        .take(16)
        .map(|q| chat(q, 48))
        .collect();
    let mut streams: Vec<_> = requests
        .iter()
        .map(|r| engine.submit(r.clone()).unwrap())
        .collect();
    for s in &mut streams {
        assert!(matches!(s.blocking_next(), Some(TokenEvent::Token { .. })));
    }
    let (cancelled, kept): (Vec<_>, Vec<_>) = streams
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let cancelled_ids: HashSet<u64> = cancelled.iter().map(|(_, s)| s.id).collect();
    drop(cancelled);
    let kept: Vec<_> = kept
        .into_iter()
        .map(|(i, s)| (i, s.blocking_collect().unwrap()))
        .collect();

    let records = records_until_idle(&engine);
    let ended_at: HashMap<u64, u64> = records
        .iter()
        .flat_map(|r| r.ended.iter().map(move |id| (*id, r.step)))
        .collect();
    for id in &cancelled_ids {
        assert!(
            ended_at.contains_key(id),
            "cancelled sequence {id} was freed"
        );
    }
    assert_eq!(EngineCounters::get(&engine.counters().cancelled), 8);
    assert_eq!(records.last().unwrap().free_blocks, total_blocks);
    // The survivors finish correctly: full length, same tokens as alone (minus the first token
    // read before the split).
    let expected = solo(&requests);
    for (i, out) in kept {
        assert_eq!(out.completion.finish_reason, FinishReason::Length);
        assert_eq!(out.completion.usage.completion_tokens, 48);
        assert_eq!(out.token_ids[..], expected[i][1..], "request {i}");
    }
}

/// Tokens served per tenant over the steps in which both tenants had requests waiting.
fn service_while_both_backlogged(records: &[StepRecord]) -> (usize, usize) {
    let (mut a, mut b) = (0, 0);
    for r in records.iter().filter(|r| r.backlogged.len() == 2) {
        for c in &r.chunks {
            match c.tenant.as_str() {
                "a" => a += c.tokens,
                "b" => b += c.tokens,
                other => panic!("unexpected tenant {other}"),
            }
        }
    }
    (a, b)
}

fn tenant_request(tenant: &str, weight: f64) -> GenerationRequest {
    GenerationRequest {
        project_share: None,
        prompt: Prompt::Text("Once upon a time".into()),
        params: SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(12)
        },
        tenant: tenant.parse().unwrap(),
        share: Share {
            weight,
            ..Share::default()
        },
        traceparent: None,
        cache_scope: None,
        adapter: None,
    }
}

/// Tenant A floods (32 requests), tenant B sends 12; 4 run at once. Returns the split of
/// service while both had requests waiting.
fn contend(weight_a: f64, weight_b: f64, fair_share: bool) -> (usize, usize) {
    let engine = engine(CoreConfig {
        max_running: 4,
        fair_share,
        ..CoreConfig::default()
    });
    // A's whole backlog, then B's, queued at once: the split does not depend on how fast the
    // core thread wakes up.
    let requests = std::iter::repeat_n(tenant_request("a", weight_a), 32)
        .chain(std::iter::repeat_n(tenant_request("b", weight_b), 12))
        .collect();
    for s in engine.submit_all(requests).unwrap() {
        s.blocking_collect().unwrap();
    }
    let (a, b) = service_while_both_backlogged(&records_until_idle(&engine));
    eprintln!("weights {weight_a}:{weight_b}, fair share {fair_share}: A {a} tokens, B {b} tokens");
    (a, b)
}

#[test]
fn fair_share_splits_service_by_weight_while_both_are_backlogged() {
    let (a, b) = contend(1.0, 1.0, true);
    assert!(a + b > 200, "enough contended service to judge: {a} + {b}");
    let b_share = b as f64 / (a + b) as f64;
    assert!(
        (b_share - 0.5).abs() <= 0.05,
        "equal weights: B got {b_share:.3} of the service"
    );

    let (a, b) = contend(3.0, 1.0, true);
    let a_share = a as f64 / (a + b) as f64;
    assert!(
        (a_share - 0.75).abs() <= 0.05,
        "weights 3:1: A got {a_share:.3} of the service"
    );

    // Without fair share, B waits behind A's whole backlog and gets (almost) nothing meanwhile.
    let (a, b) = contend(1.0, 1.0, false);
    assert!(
        (b as f64) < 0.1 * (a + b) as f64,
        "first come first served: B got {b} of {}",
        a + b
    );
}

#[test]
fn a_late_tenant_is_not_starved_by_earlier_service() {
    let engine = engine(CoreConfig {
        max_running: 2,
        ..CoreConfig::default()
    });
    // A is served alone for a while and banks a large counter ...
    let early: Vec<_> = (0..6)
        .map(|_| engine.submit(tenant_request("a", 1.0)).unwrap())
        .collect();
    for s in early {
        s.blocking_collect().unwrap();
    }
    // ... then both flood. B's counter is lifted to A's, not left at zero (which would starve A)
    // and A's history does not push B to the back either: they alternate.
    let requests = (0..10)
        .flat_map(|_| [tenant_request("a", 1.0), tenant_request("b", 1.0)])
        .collect();
    for s in engine.submit_all(requests).unwrap() {
        s.blocking_collect().unwrap();
    }
    let (a, b) = service_while_both_backlogged(&records_until_idle(&engine));
    let b_share = b as f64 / (a + b) as f64;
    assert!(a + b > 100);
    assert!(
        (b_share - 0.5).abs() <= 0.1,
        "late tenant B got {b_share:.3}"
    );
}

/// Tenant A fills the batch; B arrives while A's sequences decode. B is admitted at once by
/// preempting A's youngest, and every output, the preempted ones included, equals the
/// single-sequence reference token for token.
#[test]
fn a_newcomer_preempts_a_neighbour_whose_output_is_unchanged() {
    let engine = engine(CoreConfig {
        max_running: 4,
        ..CoreConfig::default()
    });
    let mut a: Vec<_> = QUESTIONS[..4]
        .iter()
        .map(|q| GenerationRequest {
            project_share: None,
            tenant: "a".parse().unwrap(),
            ..chat(q, 24)
        })
        .collect();
    // Every A sequence is decoding before B comes.
    let (streams, firsts) = submit_until_decoding(&engine, &a);
    let b = GenerationRequest {
        project_share: None,
        tenant: "b".parse().unwrap(),
        ..chat(QUESTIONS[5], 24)
    };
    let b_stream = engine.submit(b.clone()).unwrap();
    let b_id = b_stream.id;
    let b_out = b_stream.blocking_collect().unwrap();
    let a_out = finish_after_first(streams, firsts);

    let records = records_until_idle(&engine);
    let admitted_at = records
        .iter()
        .find(|r| r.admitted.contains(&b_id))
        .expect("B was admitted");
    assert_eq!(
        admitted_at.preempted.len(),
        1,
        "one of A's sequences made room"
    );
    let waited = records
        .iter()
        .filter(|r| r.step < admitted_at.step && r.backlogged.iter().any(|t| t.as_str() == "b"))
        .count();
    assert_eq!(waited, 0, "B waited {waited} steps for a slot");
    let preemptions_of =
        |t: &str| EngineCounters::get(&engine.counters().tenant(&t.parse().unwrap()).preemptions);
    assert!(preemptions_of("a") >= 1);
    assert_eq!(preemptions_of("b"), 0);

    a.push(b);
    let expected = solo(&a);
    for (i, out) in a_out.iter().enumerate() {
        assert_eq!(out, &expected[i], "A's request {i}");
    }
    assert_eq!(b_out.token_ids, expected[4], "B");
}

/// A tenant's waiting queue is bounded: past it, submission is refused with `QueueFull`, and a
/// batch-class request meeting a backed-up engine is shed with `Overloaded`. Nothing is left
/// counted as waiting once the accepted requests finish.
#[test]
fn bounded_queues_refuse_instead_of_growing() {
    let engine = engine(CoreConfig {
        max_running: 1,
        max_waiting_per_tenant: 3,
        shed_batch_above: 2,
        ..CoreConfig::default()
    });
    let request = |tenant: &str, priority: Priority| GenerationRequest {
        project_share: None,
        tenant: tenant.parse().unwrap(),
        share: Share {
            priority,
            ..Share::default()
        },
        ..chat("Hi", 16)
    };
    // Three wait (the core has not taken them yet, or one runs and two wait): the fourth is
    // refused whatever the timing, as the bound counts submissions not yet admitted.
    let accepted = engine
        .submit_all(vec![request("a", Priority::Interactive); 3])
        .unwrap();
    let mut refused = 0;
    let mut kept = Vec::new();
    for _ in 0..4 {
        match engine.submit(request("a", Priority::Interactive)) {
            Err(EngineError::QueueFull { limit, .. }) => {
                assert_eq!(limit, 3);
                refused += 1;
            }
            Ok(s) => kept.push(s),
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(refused >= 3, "refused {refused} of 4 past the bound");
    // A batch request meets the backlog and is shed.
    match engine.submit(request("bulk", Priority::Batch)) {
        Err(EngineError::Overloaded { limit, .. }) => assert_eq!(limit, 2),
        Ok(_) => panic!("a batch request joined a backed-up engine"),
        Err(other) => panic!("unexpected {other}"),
    }
    for s in accepted.into_iter().chain(kept) {
        s.blocking_collect().unwrap();
    }
    records_until_idle(&engine);
    let a = engine.counters().tenant(&"a".parse().unwrap());
    assert_eq!(EngineCounters::get(&a.waiting), 0);
    assert_eq!(EngineCounters::get(&a.running), 0);
    assert!(EngineCounters::get(&a.refused) >= 3);
    assert!(EngineCounters::get(&a.service_tokens) > 0);
    let bulk = engine.counters().tenant(&"bulk".parse().unwrap());
    assert_eq!(EngineCounters::get(&bulk.refused), 1);
}

/// What [`quiet_beside_bulk`] saw: the step records, the quiet sequences' ids, and every
/// output (bulk first) with the request that made it.
struct QuietBesideBulk {
    records: Vec<StepRecord>,
    quiet: Vec<request_core::SequenceId>,
    outputs: Vec<(GenerationRequest, Vec<u32>)>,
}

/// Runs batch-class requests until each is decoding, then interactive ones one after another.
fn quiet_beside_bulk(pause: bool) -> QuietBesideBulk {
    let engine = engine(CoreConfig {
        pause_for_higher_class: pause,
        ..CoreConfig::default()
    });
    let bulk: Vec<_> = QUESTIONS[..6]
        .iter()
        .map(|q| GenerationRequest {
            project_share: None,
            tenant: "bulk".parse().unwrap(),
            share: Share {
                priority: Priority::Batch,
                ..Share::default()
            },
            ..chat(q, 64)
        })
        .collect();
    let (streams, firsts) = submit_until_decoding(&engine, &bulk);
    // Batch steps run back to back now: each quiet request lands inside one almost surely.
    let mut quiet_ids = Vec::new();
    let mut outputs = Vec::new();
    for q in &QUESTIONS[6..8] {
        let request = GenerationRequest {
            project_share: None,
            tenant: "quiet".parse().unwrap(),
            ..chat(q, 4)
        };
        let stream = engine.submit(request.clone()).unwrap();
        quiet_ids.push(stream.id);
        outputs.push((request, stream.blocking_collect().unwrap().token_ids));
    }
    let bulk_out = finish_after_first(streams, firsts);
    let mut all: Vec<_> = bulk.into_iter().zip(bulk_out).collect();
    all.extend(outputs);
    QuietBesideBulk {
        records: records_until_idle(&engine),
        quiet: quiet_ids,
        outputs: all,
    }
}

/// An interactive request arriving while a step of batch work runs starts inside that step:
/// the step pauses between layers, the newcomer's prompt runs and its first token goes out,
/// then the step goes on. Seen in the records as a step holding only the newcomer's prompt
/// while batch sequences run (an ordinary step would give them their decode tokens too), and
/// numbered before the paused step. Every output still equals the single-sequence reference;
/// with pausing off no such step exists.
#[test]
fn an_interactive_arrival_starts_inside_a_paused_batch_step() {
    let urgent_steps = |records: &[StepRecord], quiet: &[request_core::SequenceId]| {
        records
            .iter()
            .filter(|r| {
                !r.chunks.is_empty()
                    && r.chunks
                        .iter()
                        .all(|c| quiet.contains(&c.sequence) && c.prefill)
                    && r.running > r.chunks.len()
            })
            .count()
    };
    let QuietBesideBulk {
        records,
        quiet,
        outputs,
    } = quiet_beside_bulk(true);
    assert!(
        urgent_steps(&records, &quiet) >= 1,
        "no quiet prompt ran inside a paused step"
    );
    let (requests, got): (Vec<_>, Vec<_>) = outputs.into_iter().unzip();
    let expected = solo(&requests);
    for (i, (got, expected)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(got, expected, "request {i}");
    }

    let off = quiet_beside_bulk(false);
    assert_eq!(urgent_steps(&off.records, &off.quiet), 0);
}

/// Four choices of one prompt (OpenAI's `n = 4`) at temperature 0: identical, and the prompt is
/// computed once: the others share its full KV blocks, as the free-block gauge shows.
#[test]
fn n_choices_share_the_prompts_kv_blocks_and_agree() {
    let engine = engine(CoreConfig::default());
    let question =
        "Explain, in a few sentences, why the sky is blue and sunsets are red. ".repeat(6);
    let requests: Vec<GenerationRequest> = (0..4).map(|_| chat(&question, 24)).collect();
    let outputs: Vec<CollectedOutput> = engine
        .submit_all(requests)
        .unwrap()
        .into_iter()
        .map(|s| s.blocking_collect().unwrap())
        .collect();
    assert!(outputs.iter().all(|o| o.token_ids == outputs[0].token_ids));
    let prompt_tokens = outputs[0].completion.usage.prompt_tokens;
    let block_size = CoreConfig::default().block_size;
    let prompt_blocks = prompt_tokens.div_ceil(block_size);
    assert!(
        prompt_blocks >= 8,
        "a prompt worth sharing: {prompt_tokens} tokens"
    );
    let records = engine.step_records();
    let total = EngineCounters::get(&engine.counters().kv_blocks_total) as usize;
    let busiest = records
        .iter()
        .filter(|r| r.running == 4)
        .map(|r| total - r.free_blocks)
        .max()
        .expect("the four ran together");
    // Unshared, four sequences hold at least four prompts' blocks; shared, one prompt's plus
    // each choice's own tail and generated tokens.
    let own = (prompt_tokens % block_size + 24).div_ceil(block_size) + 1;
    assert!(
        busiest < 4 * prompt_blocks,
        "{busiest} blocks held: not shared"
    );
    assert!(busiest <= prompt_blocks + 4 * own, "{busiest} blocks held");
    // The prompt ran once in full; the others computed only its last partial block.
    let prefill = prefill_tokens(&records);
    assert!(
        prefill < prompt_tokens + 4 * block_size,
        "{prefill} prompt tokens computed"
    );
    // Every block comes back (the gauge is set after the step that ended them).
    let free = || EngineCounters::get(&engine.counters().kv_blocks_free) as usize;
    for _ in 0..500 {
        if free() == total {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(free(), total, "blocks leaked");
}

/// A request of `tenant` with a system prompt long enough to span several KV blocks.
fn with_system(tenant: &str, question: &str, max_tokens: usize) -> GenerationRequest {
    let system = "You answer questions for the staff of a hospital. Be brief, precise and kind; \
                  say when you do not know, never invent a dosage, and point to a colleague for \
                  anything clinical. "
        .repeat(3);
    GenerationRequest {
        project_share: None,
        prompt: Prompt::Chat(vec![
            ChatMessage::new("system", &system),
            ChatMessage::new("user", question),
        ]),
        tenant: tenant.parse().unwrap(),
        ..chat(question, max_tokens)
    }
}

/// Runs each request alone, one after the other, through `engine`.
fn one_by_one(engine: &LocalEngine, requests: &[GenerationRequest]) -> Vec<CollectedOutput> {
    requests
        .iter()
        .map(|r| {
            engine
                .submit(r.clone())
                .unwrap()
                .blocking_collect()
                .unwrap()
        })
        .collect()
}

#[test]
fn greedy_output_is_the_same_with_and_without_a_cache_hit() {
    let block_size = CoreConfig::default().block_size;
    let mut requests: Vec<_> = QUESTIONS[..4]
        .iter()
        .map(|q| with_system("t", q, 24))
        .collect();
    requests.push(requests[1].clone());
    let cold = solo(&requests);
    let engine = engine(CoreConfig::default());
    let warm = one_by_one(&engine, &requests);
    for (i, (out, want)) in warm.iter().zip(&cold).enumerate() {
        assert_eq!(&out.token_ids, want, "request {i}");
    }
    let cached: Vec<usize> = warm
        .iter()
        .map(|o| o.completion.usage.cached_tokens)
        .collect();
    let prompt: Vec<usize> = warm
        .iter()
        .map(|o| o.completion.usage.prompt_tokens)
        .collect();
    assert_eq!(cached[0], 0, "a fresh engine has nothing cached");
    // The system prompt (the blocks before the question starts) is found by every later one.
    for i in 1..4 {
        assert!(
            cached[i] >= 3 * block_size,
            "request {i}: {cached:?} of {prompt:?}"
        );
        assert!(cached[i] < prompt[i]);
    }
    // The same prompt again: every full block but the one with its last token.
    assert_eq!(cached[4], (prompt[4] - 1) / block_size * block_size);
    let counters = engine.counters();
    assert_eq!(
        EngineCounters::get(&counters.prefix_hit_tokens) as usize,
        cached.iter().sum::<usize>()
    );
    assert_eq!(
        EngineCounters::get(&counters.prefix_query_tokens) as usize,
        prompt.iter().sum::<usize>()
    );
    // Only the tokens not found were computed.
    let prefill = prefill_tokens(&records_until_idle(&engine));
    assert_eq!(
        prefill,
        prompt.iter().sum::<usize>() - cached.iter().sum::<usize>()
    );
    assert!(EngineCounters::get(&counters.kv_blocks_cached) > 0);
}

#[test]
fn tenants_share_cached_blocks_only_within_a_scope() {
    let engine = engine(CoreConfig::default());
    let question = QUESTIONS[2];
    let cached = |r: GenerationRequest| {
        engine
            .submit(r)
            .unwrap()
            .blocking_collect()
            .unwrap()
            .completion
            .usage
            .cached_tokens
    };
    assert_eq!(cached(with_system("a", question, 4)), 0);
    // The same prompt from another tenant computes everything: no block crosses tenants.
    assert_eq!(cached(with_system("b", question, 4)), 0);
    assert!(cached(with_system("a", question, 4)) > 0, "a finds its own");
    assert!(cached(with_system("b", question, 4)) > 0, "b finds its own");
    // Two tenants of one sharing group share; a salt narrows the scope further.
    let in_group = |tenant: &str, scope: &str| GenerationRequest {
        project_share: None,
        cache_scope: Some(scope.to_string()),
        adapter: None,
        ..with_system(tenant, question, 4)
    };
    assert_eq!(cached(in_group("c", "group\0clinic")), 0);
    assert!(cached(in_group("d", "group\0clinic")) > 0);
    assert_eq!(cached(in_group("d", "group\0clinic\0salt\0x")), 0);
    assert_eq!(cached(in_group("a", "group\0other")), 0);
    let tenant = |name: &str| engine.counters().tenant(&name.parse().unwrap());
    assert_eq!(
        EngineCounters::get(&tenant("c").prefix_hit_tokens),
        0,
        "the first of the group found nothing"
    );
    assert!(EngineCounters::get(&tenant("d").prefix_hit_tokens) > 0);
}

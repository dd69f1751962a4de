//! The request core on a fake runner: no model, but a "network" whose next token is a hash of
//! every token it reads back from the KV slots of the sequence's block table. A block handed to
//! the wrong sequence, freed while in use, or not recomputed after a preemption changes the
//! output; so does a paused step that lost its place. Each sequence's output must equal what
//! the same hash gives over its own tokens alone (its solo output), whatever ran beside it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine_api::{
    EngineCounters, EngineError, FinishReason, GenerationRequest, Prompt, SamplingParams,
    TokenEvent, TokenStream,
};
use policies::{Priority, Share};
use proptest::prelude::*;
use request_core::{
    BlockId, CoreConfig, CoreHandle, Job, ModelRunner, PausePoint, Progress, RequestCore, Sampled,
    StepInput, StepRecord,
};

const LAYERS: usize = 4;
const BLOCK_SIZE: usize = 4;

/// The fake network: the next token after `tokens`.
fn next_token(tokens: &[u32]) -> u32 {
    let hash = tokens
        .iter()
        .enumerate()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, (i, &t)| {
            (h ^ (t as u64 + 31 * i as u64)).wrapping_mul(0x100_0000_01b3)
        });
    (hash % 997) as u32 + 1
}

/// What a sequence with `prompt` generates alone: `max_tokens` tokens of the fake network.
fn solo_output(prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let mut tokens = prompt.to_vec();
    for _ in 0..max_tokens {
        tokens.push(next_token(&tokens));
    }
    tokens[prompt.len()..].to_vec()
}

/// How many tokens a sequence may still generate.
struct Budget {
    max_tokens: usize,
    generated: usize,
}

/// Work to do from inside a step, between its first two layers (a request arriving while the
/// step runs).
type Arrival = Box<dyn FnOnce() + Send>;

struct FakeRunner {
    /// The token whose keys and values each (block, offset) holds.
    kv: HashMap<(BlockId, usize), u32>,
    paused: Option<(StepInput, usize)>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    pauses: Arc<AtomicUsize>,
}

impl FakeRunner {
    fn run_from(
        &mut self,
        step: StepInput,
        first_layer: usize,
        pause: &PausePoint<'_>,
    ) -> Progress<Vec<u32>> {
        if first_layer == 0 {
            self.write(&step);
        }
        for layer in first_layer..LAYERS {
            if layer == 1 {
                let arrivals = std::mem::take(&mut *self.arrivals.lock().unwrap());
                arrivals.into_iter().for_each(|arrive| arrive());
            }
            if layer + 1 < LAYERS && pause.requested() {
                self.pauses.fetch_add(1, Ordering::SeqCst);
                self.paused = Some((step, layer + 1));
                return Progress::Paused;
            }
        }
        Progress::Done(self.logits(&step))
    }

    /// Each chunk's tokens into its slots.
    fn write(&mut self, step: &StepInput) {
        for chunk in &step.chunks {
            for (k, &token) in chunk.tokens.iter().enumerate() {
                let p = chunk.table.len + k;
                let block = chunk.table.blocks[p / BLOCK_SIZE];
                self.kv.insert((block, p % BLOCK_SIZE), token);
            }
        }
    }

    /// For each chunk that samples: the next token over what its slots hold.
    fn logits(&self, step: &StepInput) -> Vec<u32> {
        let read =
            |blocks: &[BlockId], p: usize| self.kv[&(blocks[p / BLOCK_SIZE], p % BLOCK_SIZE)];
        step.chunks
            .iter()
            .filter(|c| c.samples)
            .map(|c| {
                let end = c.table.len + c.tokens.len();
                let tokens: Vec<u32> = (0..end).map(|p| read(&c.table.blocks, p)).collect();
                next_token(&tokens)
            })
            .collect()
    }
}

impl ModelRunner for FakeRunner {
    type Decoding = Budget;
    type Logits = Vec<u32>;

    fn start(
        &mut self,
        step: StepInput,
        pause: &PausePoint<'_>,
    ) -> Result<Progress<Vec<u32>>, EngineError> {
        Ok(self.run_from(step, 0, pause))
    }

    fn resume(&mut self, pause: &PausePoint<'_>) -> Result<Progress<Vec<u32>>, EngineError> {
        let (step, layer) = self.paused.take().expect("a paused step");
        Ok(self.run_from(step, layer, pause))
    }

    fn run_beside(&mut self, step: StepInput) -> Result<Vec<u32>, EngineError> {
        self.write(&step);
        Ok(self.logits(&step))
    }

    fn sample(
        &mut self,
        logits: &Vec<u32>,
        decodings: &mut [&mut Budget],
    ) -> Vec<Result<Sampled, EngineError>> {
        logits
            .iter()
            .zip(decodings.iter_mut())
            .map(|(&token, budget)| {
                budget.generated += 1;
                let done = budget.generated >= budget.max_tokens;
                Ok(Sampled {
                    token,
                    text: token.to_string(),
                    logprobs: None,
                    finish: done.then_some(FinishReason::Length),
                })
            })
            .collect()
    }
}

struct Core {
    handle: Arc<CoreHandle<Budget>>,
    counters: Arc<EngineCounters>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    pauses: Arc<AtomicUsize>,
    next_id: AtomicUsize,
}

fn start(config: CoreConfig, num_blocks: usize) -> Core {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let pauses = Arc::new(AtomicUsize::new(0));
    let runner = FakeRunner {
        kv: HashMap::new(),
        paused: None,
        arrivals: arrivals.clone(),
        pauses: pauses.clone(),
    };
    let counters = Arc::new(EngineCounters::default());
    let handle =
        RequestCore::start("fake".into(), runner, num_blocks, &config, counters.clone()).unwrap();
    Core {
        handle: Arc::new(handle),
        counters,
        arrivals,
        pauses,
        next_id: AtomicUsize::new(0),
    }
}

fn config() -> CoreConfig {
    CoreConfig {
        max_batch_tokens: 16,
        max_running: 4,
        prefill_chunk: 8,
        block_size: BLOCK_SIZE,
        record_steps: true,
        lower_class_step_tokens: Some(4),
        reserved_interactive_slots: 1,
        ..CoreConfig::default()
    }
}

/// A request of `tenant` in `class`.
#[derive(Debug, Clone)]
struct Ask {
    tenant: u8,
    class: Priority,
    prompt: Vec<u32>,
    max_tokens: usize,
}

/// A job for `ask` and the stream that reads it.
fn job(core: &Core, ask: &Ask) -> (Job<Budget>, TokenStream) {
    let id = core.next_id.fetch_add(1, Ordering::SeqCst) as u64;
    let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
    let tenant = format!("t{}", ask.tenant).parse().unwrap();
    let mut request = GenerationRequest::new(
        Prompt::Tokens(ask.prompt.clone()),
        SamplingParams::greedy(ask.max_tokens),
        tenant,
    );
    request.share = Share {
        priority: ask.class,
        ..Share::default()
    };
    let counters = core.counters.tenant(&request.tenant);
    counters.waiting.fetch_add(1, Ordering::SeqCst);
    let job = Job {
        id,
        prompt_ids: ask.prompt.clone(),
        request,
        events,
        submitted_at: Instant::now(),
        counters,
        decoding: Budget {
            max_tokens: ask.max_tokens,
            generated: 0,
        },
        fork_of: None,
        cache_root: None,
        adapter: None,
    };
    (job, TokenStream::new(id, ask.prompt.len(), receiver))
}

/// The token ids a stream carries until it ends; `cancel_after`: drop it after that many.
fn read(mut stream: TokenStream, cancel_after: Option<usize>) -> Option<Vec<u32>> {
    let mut tokens = Vec::new();
    while let Some(event) = stream.blocking_next() {
        match event {
            TokenEvent::Token { id, .. } => {
                tokens.push(id);
                if cancel_after == Some(tokens.len()) {
                    return None;
                }
            }
            TokenEvent::Finished(_) => return Some(tokens),
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("the stream ended without finishing");
}

/// Waits until the core has nothing running or waiting and every block is free again, and
/// returns its step records. Fails if the blocks never all come back.
fn settle(core: &Core) -> Vec<StepRecord> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let total = core.counters.kv_blocks_total.load(Ordering::SeqCst);
    loop {
        let free = core.counters.kv_blocks_free.load(Ordering::SeqCst);
        let active = core.counters.active.load(Ordering::SeqCst);
        if free == total && active == 0 {
            return core.handle.step_records();
        }
        assert!(
            Instant::now() < deadline,
            "blocks leaked: {free} of {total} free, {active} sequences active"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_interactive_arrival_runs_beside_a_paused_batch_step() {
    let core = start(config(), 32);
    let batch = Ask {
        tenant: 0,
        class: Priority::Batch,
        prompt: (1..=8).collect(),
        max_tokens: 3,
    };
    let quiet = Ask {
        tenant: 1,
        class: Priority::Interactive,
        prompt: vec![5, 6, 7],
        max_tokens: 2,
    };
    let (quiet_job, quiet_stream) = job(&core, &quiet);
    let quiet_id = quiet_job.id;
    let handle = core.handle.clone();
    let mut pending = Some(quiet_job);
    // The quiet request arrives while the batch prompt's first step is between its layers.
    core.arrivals.lock().unwrap().push(Box::new(move || {
        let _ = handle.submit(vec![pending.take().unwrap()]);
    }));
    let (batch_job, batch_stream) = job(&core, &batch);
    let batch_id = batch_job.id;
    core.handle.submit(vec![batch_job]).map_err(|_| ()).unwrap();
    assert_eq!(
        read(quiet_stream, None).unwrap(),
        solo_output(&quiet.prompt, 2)
    );
    assert_eq!(
        read(batch_stream, None).unwrap(),
        solo_output(&batch.prompt, 3)
    );
    let records = settle(&core);
    assert!(
        core.pauses.load(Ordering::SeqCst) >= 1,
        "the batch step paused"
    );
    let first_step_of = |id: u64| {
        records
            .iter()
            .filter(|r| r.chunks.iter().any(|c| c.sequence == id))
            .map(|r| r.step)
            .min()
            .unwrap()
    };
    assert!(
        first_step_of(quiet_id) < first_step_of(batch_id),
        "the quiet prompt ran before the paused batch step ended: {records:#?}"
    );
}

fn ask() -> impl Strategy<Value = (Ask, Option<usize>, bool)> {
    (
        0u8..3,
        prop::bool::ANY,
        prop::collection::vec(1u32..50, 1..20),
        1usize..10,
        prop::option::weighted(0.25, 1usize..4),
        prop::bool::ANY,
    )
        .prop_map(
            |(tenant, interactive, prompt, max_tokens, cancel, arrives)| {
                let class = match interactive {
                    true => Priority::Interactive,
                    false => Priority::Batch,
                };
                let ask = Ask {
                    tenant,
                    class,
                    prompt,
                    max_tokens,
                };
                (ask, cancel, arrives && interactive)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever runs together, preempts, pauses or is cancelled: every finished sequence
    /// generates exactly its solo output, and every block comes back.
    #[test]
    fn outputs_match_solo_and_no_block_leaks(
        asks in prop::collection::vec(ask(), 1..12),
        num_blocks in 8usize..24,
    ) {
        let core = start(config(), num_blocks);
        let mut readers = Vec::new();
        let mut upfront = Vec::new();
        for (ask, cancel, arrives) in &asks {
            let (job, stream) = job(&core, ask);
            let expected = solo_output(&ask.prompt, ask.max_tokens);
            let cancel = *cancel;
            readers.push(std::thread::spawn(move || (read(stream, cancel), expected)));
            match arrives {
                true => {
                    let handle = core.handle.clone();
                    let mut pending = Some(job);
                    core.arrivals.lock().unwrap().push(Box::new(move || {
                        let _ = handle.submit(vec![pending.take().unwrap()]);
                    }));
                }
                false => upfront.push(job),
            }
        }
        if upfront.is_empty() {
            // Nothing would start a step for the arrivals to arrive in: send them now.
            let arrivals = std::mem::take(&mut *core.arrivals.lock().unwrap());
            arrivals.into_iter().for_each(|arrive| arrive());
        } else {
            core.handle.submit(upfront).map_err(|_| ()).unwrap();
        }
        for reader in readers {
            let (output, expected) = reader.join().unwrap();
            if let Some(output) = output {
                prop_assert_eq!(output, expected);
            }
        }
        // Every arrival came in during the first step (each step passes its first layer).
        prop_assert!(core.arrivals.lock().unwrap().is_empty());
        settle(&core);
    }
}

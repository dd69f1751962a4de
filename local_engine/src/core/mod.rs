//! The request core: continuous batching over a paged KV cache.
//!
//! `submit` pushes onto a lock-free queue (crossbeam's unbounded channel, a lock-free linked
//! list of blocks) and returns the token stream at once. One scheduler thread per engine owns
//! every piece of batch state: the waiting queue, the running batch, the block tables and the
//! KV pool, so the hot path takes no lock. Each step it plans (see [`scheduler`]), runs one
//! forward pass over the flattened tokens of every planned sequence, samples, and pushes each
//! new token to its request's channel. A dropped receiver frees its sequence at the next step.
//!
//! On the CPU a step of many batch-class sequences takes tens of milliseconds. An interactive
//! request that arrives meanwhile does not wait for its end: between two layers the step is
//! paused, the newcomer is admitted if it fits without preempting anyone, its first prompt chunk
//! runs (its own buffers, its own blocks) and its first token goes out; then the paused step goes
//! on from where it was ([`CoreConfig::pause_for_higher_class`]).

pub mod block_allocator;
pub mod scheduler;
pub mod sequence;

use policies::TenantId;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use candle_core::IndexOp;

use crate::error::OrExecution;
use crate::error::Result;
use crate::local::loader::LoadedModel;
use crate::text::GgufTokenizer;
use engine_api::{EngineCounters, GenerationRequest, TenantCounters, TokenEvent};
use models::{BlockTable, Pause, SequenceInput, Workspace};
use policies::Priority;
use scheduler::{Scheduler, SchedulerLimits, StepPlan};
use sequence::{Next, Sequence, SequenceId};

/// A request handed to the request core: tokenised, with the channel its events go to.
pub(crate) struct Job {
    pub id: SequenceId,
    pub prompt_ids: Vec<u32>,
    pub request: GenerationRequest,
    pub events: tokio::sync::mpsc::UnboundedSender<TokenEvent>,
    pub submitted_at: std::time::Instant,
    /// Its tenant's counters (the `waiting` gauge already counts it).
    pub counters: Arc<TenantCounters>,
    /// Its grammar, compiled at submission (off the scheduler's thread).
    pub constraint: Option<structured_output::ConstraintState>,
    /// An earlier job of the same submission with the same prompt, whose KV blocks this one
    /// shares.
    pub fork_of: Option<SequenceId>,
    /// The root key of its prefix-cache scope (`None`: the cache is off).
    pub cache_root: Option<block_allocator::BlockHash>,
}

/// Limits and sizes of one engine's request core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    /// Tokens per forward pass (decodes plus prefill chunks).
    pub max_batch_tokens: usize,
    /// Sequences in the running batch at once.
    pub max_running: usize,
    /// Largest prompt chunk of one sequence per step: long prompts are prefilled over several
    /// steps while the other sequences keep decoding.
    pub prefill_chunk: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// KV pool size in positions (rounded up to whole blocks); `None`: the model's context
    /// length, so one sequence can always fill its context.
    pub kv_cache_tokens: Option<usize>,
    /// Keep a record of every step (tests, debugging): see [`crate::LocalEngine::step_records`].
    pub record_steps: bool,
    /// Admit across tenants by virtual token counters (fair share), and preempt for a tenant
    /// short of its share of slots; off: first come, first served.
    pub fair_share: bool,
    /// Tokens per step that batch-class sequences may use while interactive ones run
    /// (`None`: no limit). Small on a CPU, where every token lengthens the step.
    pub lower_class_step_tokens: Option<usize>,
    /// Requests of one tenant that may wait for admission, unless its own terms say otherwise;
    /// beyond it the engine refuses ([`engine_api::EngineError::QueueFull`]).
    pub max_waiting_per_tenant: usize,
    /// Batch-class requests are shed ([`engine_api::EngineError::Overloaded`]) while this many
    /// requests already wait.
    pub shed_batch_above: usize,
    /// Pause a step between layers to start a newly arrived request of a higher class than any
    /// in the step (CPU path), so that its first token does not wait for the whole step.
    pub pause_for_higher_class: bool,
    /// Running slots batch-class sequences may not take, kept for interactive arrivals (so
    /// that one can start inside a paused step without preempting anyone).
    pub reserved_interactive_slots: usize,
    /// Keep computed prompt blocks for reuse by later requests of the same scope (tenant or
    /// sharing group) whose prompts start alike: they skip that part of the prefill.
    pub prefix_cache: bool,
}

impl CoreConfig {
    /// The default for [`Self::lower_class_step_tokens`] on `device`: on a CPU every token
    /// lengthens the step, so batch work gets one token beside interactive work; an
    /// accelerator's decode step barely grows with the batch, so it gets 64.
    pub fn default_lower_class_step_tokens(device: crate::DeviceSpec) -> usize {
        match device {
            crate::DeviceSpec::Cpu => 1,
            _ => 64,
        }
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 512,
            max_running: 64,
            prefill_chunk: 256,
            block_size: 16,
            kv_cache_tokens: None,
            record_steps: false,
            fair_share: true,
            lower_class_step_tokens: None,
            max_waiting_per_tenant: 256,
            shed_batch_above: 64,
            pause_for_higher_class: true,
            reserved_interactive_slots: 1,
            prefix_cache: true,
        }
    }
}

/// What one sequence did in a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    /// The sequence.
    pub sequence: SequenceId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Tokens it ran in the step.
    pub tokens: usize,
    /// Prompt (or recompute) tokens rather than one decode token.
    pub prefill: bool,
}

/// What the core did in one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// The step's number, from 1.
    pub step: u64,
    /// What each sequence ran.
    pub chunks: Vec<ChunkRecord>,
    /// Sequences admitted into the running batch at this step.
    pub admitted: Vec<SequenceId>,
    /// Sequences preempted (their KV blocks freed) at this step.
    pub preempted: Vec<SequenceId>,
    /// Sequences that finished, were cancelled or failed in this step.
    pub ended: Vec<SequenceId>,
    /// Free KV blocks after the step.
    pub free_blocks: usize,
    /// Sequences running after the step.
    pub running: usize,
    /// Sequences waiting after the step.
    pub waiting: usize,
    /// Tenants with sequences waiting for admission when the step was planned.
    pub backlogged: Vec<TenantId>,
}

/// The scheduler thread's state.
pub(crate) struct RequestCore {
    model: Arc<LoadedModel>,
    workspace: Workspace,
    scheduler: Scheduler,
    counters: Arc<EngineCounters>,
    records: Option<crossbeam_channel::Sender<StepRecord>>,
    steps: u64,
    pause_for_higher_class: bool,
}

impl RequestCore {
    pub(crate) fn new(
        model: Arc<LoadedModel>,
        config: &CoreConfig,
        counters: Arc<EngineCounters>,
        records: Option<crossbeam_channel::Sender<StepRecord>>,
    ) -> Result<Self> {
        let num_blocks = num_blocks(config, model.model.config().context_length);
        let mut workspace = model
            .model
            .new_workspace(num_blocks, config.block_size)
            .or_execution()?;
        workspace.prefault();
        let limits = SchedulerLimits {
            max_batch_tokens: config.max_batch_tokens,
            max_running: config.max_running,
            prefill_chunk: config.prefill_chunk,
            block_size: config.block_size,
            fair_share: config.fair_share,
            lower_class_step_tokens: config.lower_class_step_tokens,
            reserved_interactive_slots: config.reserved_interactive_slots,
        };
        counters
            .kv_blocks_total
            .store(num_blocks as u64, Ordering::Relaxed);
        counters
            .kv_blocks_free
            .store(num_blocks as u64, Ordering::Relaxed);
        Ok(Self {
            model,
            workspace,
            scheduler: Scheduler::new(limits, num_blocks),
            counters,
            records,
            steps: 0,
            pause_for_higher_class: config.pause_for_higher_class,
        })
    }

    /// Positions the KV pool holds.
    pub(crate) fn capacity_tokens(&self) -> usize {
        self.scheduler.capacity_tokens()
    }

    /// Runs until the submission queue is closed and every sequence has ended.
    pub(crate) fn run(mut self, queue: crossbeam_channel::Receiver<Vec<Job>>) {
        loop {
            if self.scheduler.is_idle() {
                match queue.recv() {
                    Ok(jobs) => jobs
                        .into_iter()
                        .for_each(|job| enqueue(&mut self.scheduler, &self.counters, job)),
                    Err(_) => return,
                }
            }
            drain(&queue, &mut self.scheduler, &self.counters);
            self.step(&queue);
        }
    }

    /// One scheduling step and forward pass.
    fn step(&mut self, queue: &crossbeam_channel::Receiver<Vec<Job>>) {
        let mut ended = self.drop_cancelled();
        let plan = self.scheduler.plan();
        if !plan.preempted.is_empty() {
            tracing::debug!(sequences = ?plan.preempted, "preempted: KV blocks exhausted");
        }
        self.counters
            .preemptions
            .fetch_add(plan.preempted.len() as u64, Ordering::Relaxed);
        let mut urgent_steps = Vec::new();
        if !plan.chunks.is_empty() {
            ended.extend(self.execute(&plan, queue, &mut urgent_steps));
        }
        for (step, plan, ended) in urgent_steps {
            self.publish(step, &plan, ended);
        }
        self.publish(self.steps, &plan, ended);
    }

    /// Frees every sequence whose client went away.
    fn drop_cancelled(&mut self) -> Vec<SequenceId> {
        let ended = self.scheduler.remove_cancelled();
        self.counters
            .cancelled
            .fetch_add(ended.len() as u64, Ordering::Relaxed);
        ended
    }

    /// Runs the planned chunks through the model and samples where a prompt or decode ends.
    /// While the step is paused between layers, urgent steps may run (see the module's
    /// documentation); their plans and outcomes go to `urgent_steps` to be published.
    fn execute(
        &mut self,
        plan: &StepPlan,
        queue: &crossbeam_channel::Receiver<Vec<Job>>,
        urgent_steps: &mut Vec<(u64, StepPlan, Vec<SequenceId>)>,
    ) -> Vec<SequenceId> {
        let running = &mut self.scheduler.running;
        let (tokens, wants_logits) = step_inputs(running, plan);
        // The step runs on copies of its block tables (their lengths are copied back after),
        // so that the scheduler may admit urgent work while the step is paused.
        let mut tables: Vec<BlockTable> = plan
            .chunks
            .iter()
            .map(|c| running[c.index].table.clone())
            .collect();
        let in_flight = plan
            .chunks
            .iter()
            .map(|c| running[c.index].share.priority)
            .max()
            .unwrap_or_default();
        let pausable = self.pause_for_higher_class && in_flight < Priority::HIGHEST_FIRST[0];
        let logits = {
            let mut inputs = inputs(&mut tables, &tokens, &wants_logits);
            if pausable {
                let mut urgent = UrgentSteps {
                    paused_len: self.scheduler.running.len(),
                    scheduler: &mut self.scheduler,
                    counters: &self.counters,
                    tokenizer: &self.model.tokenizer,
                    steps: &mut self.steps,
                    queue,
                    in_flight,
                    done: urgent_steps,
                };
                self.model
                    .model
                    .forward_pausable(&mut self.workspace, &mut inputs, &mut |pause| {
                        urgent.run(pause)
                    })
            } else {
                self.model.model.forward(&mut self.workspace, &mut inputs)
            }
        };
        for (c, table) in plan.chunks.iter().zip(&tables) {
            self.scheduler.running[c.index].table.len = table.len;
        }
        self.steps += 1;
        settle(
            &mut self.scheduler,
            &self.counters,
            &self.model.tokenizer,
            plan,
            &wants_logits,
            logits,
        )
    }

    /// Updates the gauges and, when asked for, records step number `step`.
    fn publish(&mut self, step: u64, plan: &StepPlan, ended: Vec<SequenceId>) {
        let s = &self.scheduler;
        let active = (s.running.len() + s.waiting.len()) as u64;
        self.counters
            .running
            .store(s.running.len() as u64, Ordering::Relaxed);
        self.counters
            .waiting
            .store(s.waiting.len() as u64, Ordering::Relaxed);
        self.counters.active.store(active, Ordering::Relaxed);
        self.counters
            .kv_blocks_free
            .store(s.allocator.free_count() as u64, Ordering::Relaxed);
        self.counters
            .kv_blocks_cached
            .store(s.allocator.cached_count() as u64, Ordering::Relaxed);
        self.counters
            .prefix_query_tokens
            .store(s.prefix_query_tokens, Ordering::Relaxed);
        self.counters
            .prefix_hit_tokens
            .store(s.prefix_hit_tokens, Ordering::Relaxed);
        let Some(records) = &self.records else { return };
        if plan.chunks.is_empty() && ended.is_empty() && plan.preempted.is_empty() {
            return;
        }
        let chunks = plan
            .chunks
            .iter()
            .map(|c| ChunkRecord {
                sequence: c.sequence,
                tenant: c.tenant.clone(),
                tokens: c.tokens,
                prefill: c.prefill,
            })
            .collect();
        let _ = records.send(StepRecord {
            step,
            chunks,
            admitted: plan.admitted.clone(),
            preempted: plan.preempted.clone(),
            ended,
            free_blocks: s.allocator.free_count(),
            running: s.running.len(),
            waiting: s.waiting.len(),
            backlogged: plan.backlogged.clone(),
        });
    }
}

/// Turns a submitted job into a waiting sequence.
fn enqueue(scheduler: &mut Scheduler, counters: &EngineCounters, job: Job) {
    let mut sequence = Sequence::new(
        job.id,
        job.request.tenant,
        job.prompt_ids,
        job.request.params,
        job.events,
        job.submitted_at,
    );
    sequence.share = job.request.share;
    sequence.counters = job.counters;
    sequence.constraint = job.constraint;
    sequence.fork_of = job.fork_of;
    sequence.cache_root = job.cache_root;
    counters
        .prompt_tokens
        .fetch_add(sequence.prompt_ids.len() as u64, Ordering::Relaxed);
    scheduler.enqueue(sequence);
}

/// Enqueues every job submitted so far.
fn drain(
    queue: &crossbeam_channel::Receiver<Vec<Job>>,
    scheduler: &mut Scheduler,
    counters: &EngineCounters,
) {
    while let Ok(jobs) = queue.try_recv() {
        jobs.into_iter()
            .for_each(|job| enqueue(scheduler, counters, job));
    }
}

/// Each planned chunk's tokens, and whether its last token's logits are wanted.
fn step_inputs(running: &[Sequence], plan: &StepPlan) -> (Vec<Vec<u32>>, Vec<bool>) {
    plan.chunks
        .iter()
        .map(|c| {
            let s = &running[c.index];
            (s.next_tokens(c.tokens), s.pending() == c.tokens)
        })
        .unzip()
}

fn inputs<'a>(
    tables: impl IntoIterator<Item = &'a mut BlockTable>,
    tokens: &'a [Vec<u32>],
    wants_logits: &[bool],
) -> Vec<SequenceInput<'a>> {
    tables
        .into_iter()
        .zip(tokens)
        .zip(wants_logits)
        .map(|((table, tokens), &wants_logits)| SequenceInput {
            tokens,
            table,
            wants_logits,
        })
        .collect()
}

/// After a forward pass: counts the step, samples where logits came back, streams the tokens,
/// and takes finished (or, if the pass failed, all planned) sequences out of the batch.
/// Returns the sequences that ended.
fn settle(
    scheduler: &mut Scheduler,
    counters: &EngineCounters,
    tokenizer: &GgufTokenizer,
    plan: &StepPlan,
    wants_logits: &[bool],
    logits: candle_core::Result<candle_core::Tensor>,
) -> Vec<SequenceId> {
    let batch_tokens: usize = plan.chunks.iter().map(|c| c.tokens).sum();
    counters.steps.fetch_add(1, Ordering::Relaxed);
    counters
        .batch_tokens
        .fetch_add(batch_tokens as u64, Ordering::Relaxed);
    for c in &plan.chunks {
        scheduler.running[c.index]
            .counters
            .service_tokens
            .fetch_add(c.tokens as u64, Ordering::Relaxed);
    }

    let mut ended = Vec::new();
    let logits = match logits {
        Ok(logits) => logits,
        Err(e) => {
            // A failed pass leaves the planned sequences' caches unknown: end them all.
            tracing::error!(error = %e, "forward pass failed");
            let mut indices: Vec<usize> = plan.chunks.iter().map(|c| c.index).collect();
            indices.sort_unstable_by(|a, b| b.cmp(a));
            for i in indices {
                let sequence = scheduler.finish(i);
                sequence.fail(engine_api::Failure::new(
                    engine_api::FailureKind::Execution,
                    format!("model execution failed: {e}"),
                ));
                counters.failed.fetch_add(1, Ordering::Relaxed);
                ended.push(sequence.id);
            }
            return ended;
        }
    };

    // Full blocks just computed join the prefix cache before anything ends and frees them.
    for c in &plan.chunks {
        scheduler.register_computed(c.index);
    }
    prepare_masks(scheduler, plan, wants_logits);
    let mut finished = Vec::new();
    let mut row = 0;
    for (chunk, wants) in plan.chunks.iter().zip(wants_logits) {
        if !wants {
            continue;
        }
        let sequence = &mut scheduler.running[chunk.index];
        let outcome = logits
            .i(row)
            .map_err(crate::error::execution)
            .and_then(|l| sequence.accept_logits(&l, tokenizer));
        row += 1;
        counters.generated_tokens.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(Next::Continue) => {}
            Ok(Next::Finished) => {
                counters.finished.fetch_add(1, Ordering::Relaxed);
                finished.push(chunk.index);
            }
            Err(e) => {
                sequence.fail_with(&e);
                counters.failed.fetch_add(1, Ordering::Relaxed);
                finished.push(chunk.index);
            }
        }
    }
    // Free finished sequences' blocks in this same step (highest index first).
    finished.sort_unstable_by(|a, b| b.cmp(a));
    for i in finished {
        ended.push(scheduler.finish(i).id);
    }
    ended
}

/// Computes the grammar masks of every constrained sequence about to sample, spread over the
/// model's threads (the other threads would otherwise idle while the scheduler's thread
/// samples). A sequence whose mask fails here fails when it samples.
fn prepare_masks(scheduler: &mut Scheduler, plan: &StepPlan, wants_logits: &[bool]) {
    let sampling: Vec<usize> = plan
        .chunks
        .iter()
        .zip(wants_logits)
        .filter(|(_, &wants)| wants)
        .map(|(c, _)| c.index)
        .collect();
    let states: Vec<std::sync::Mutex<&mut structured_output::ConstraintState>> = scheduler
        .running
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| sampling.contains(i))
        .filter_map(|(_, s)| s.constraint.as_mut().map(std::sync::Mutex::new))
        .collect();
    if states.len() < 2 {
        return;
    }
    cpu_kernels::parallel::for_each_chunk(states.len(), 1, |_, range| {
        for state in &states[range] {
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            // An error is kept by the matcher and reported again at sampling.
            let _ = state.prepare();
        }
    });
}

/// What a paused step lends to the steps that run while it waits between layers.
struct UrgentSteps<'a> {
    scheduler: &'a mut Scheduler,
    counters: &'a EngineCounters,
    tokenizer: &'a GgufTokenizer,
    steps: &'a mut u64,
    queue: &'a crossbeam_channel::Receiver<Vec<Job>>,
    /// The highest class in the paused step: only classes above it may cut in.
    in_flight: Priority,
    /// Sequences in `running` when the step was planned; those after were admitted during the
    /// pause.
    paused_len: usize,
    /// Each urgent step's number, plan and ended sequences, to publish.
    done: &'a mut Vec<(u64, StepPlan, Vec<SequenceId>)>,
}

impl UrgentSteps<'_> {
    /// Called between two layers of the paused step: gives the sequences admitted during this
    /// pause their next token, admits what arrived of a higher class and fits without
    /// preemption, and runs its first prompt chunk now. Sequences it admits sit
    /// after every sequence of the paused step in `running`, so the paused step's indices hold
    /// even when one of them ends at once.
    fn run(&mut self, pause: &mut Pause<'_>) {
        drain(self.queue, self.scheduler, self.counters);
        let admitted_here = self.scheduler.running.len() > self.paused_len;
        if !admitted_here && !self.scheduler.waits_above(self.in_flight) {
            return;
        }
        let plan = self.scheduler.plan_urgent(self.in_flight, self.paused_len);
        if plan.chunks.is_empty() {
            if !plan.admitted.is_empty() {
                *self.steps += 1;
                self.done.push((*self.steps, plan, Vec::new()));
            }
            return;
        }
        let (tokens, wants_logits) = step_inputs(&self.scheduler.running, &plan);
        let logits = {
            let tables = self
                .scheduler
                .running
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| plan.chunks.iter().any(|c| c.index == *i))
                .map(|(_, s)| &mut s.table);
            pause.forward(&mut inputs(tables, &tokens, &wants_logits))
        };
        *self.steps += 1;
        let ended = settle(
            self.scheduler,
            self.counters,
            self.tokenizer,
            &plan,
            &wants_logits,
            logits,
        );
        self.done.push((*self.steps, plan, ended));
    }
}

fn num_blocks(config: &CoreConfig, context_length: usize) -> usize {
    let tokens = config.kv_cache_tokens.unwrap_or(context_length);
    tokens.div_ceil(config.block_size).max(1)
}

//! The request core's thread: continuous batching over a paged KV cache.
//!
//! Submitters push onto a lock-free queue (crossbeam's unbounded channel, a lock-free linked
//! list of blocks) through a [`CoreHandle`] and get their token streams at once. One thread per
//! engine owns every piece of batch state: the waiting queue, the running batch and the block
//! tables, so the hot path takes no lock. Each step it plans (see [`crate::scheduler`]), hands
//! the planned chunks to its [`ModelRunner`], has it sample where logits came back, and pushes
//! each new token to its request's channel. A dropped receiver frees its sequence at the next
//! step.
//!
//! On the CPU a step of many batch-class sequences takes tens of milliseconds. An interactive
//! request that arrives meanwhile does not wait for its end: the runner pauses the step between
//! two layers ([`crate::runner::PausePoint`]), the core admits the newcomer if it fits without
//! preempting anyone and has its first prompt chunk run beside the paused step (its own
//! buffers, its own blocks), its first token goes out, and the paused step resumes from where
//! it was ([`CoreConfig::pause_for_higher_class`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use engine_api::{EngineCounters, EngineError, GenerationRequest, TenantCounters, TokenEvent};
use policies::{Priority, TenantId};

use crate::block_pool::{blocks_for, BlockHash};
use crate::config::CoreConfig;
use crate::runner::{Arrivals, ModelRunner, PausePoint, Progress};
use crate::scheduler::{Scheduler, SchedulerLimits, StepPlan};
use crate::sequence::{Next, Sequence, SequenceId};

/// A request handed to the request core: tokenised, with the channel its events go to.
pub struct Job<D> {
    /// Its id in this engine.
    pub id: SequenceId,
    /// The prompt's tokens.
    pub prompt_ids: Vec<u32>,
    /// The request (its tenant and terms are what the core reads).
    pub request: GenerationRequest,
    /// Where its events go.
    pub events: tokio::sync::mpsc::UnboundedSender<TokenEvent>,
    /// When it was submitted.
    pub submitted_at: Instant,
    /// Its tenant's counters (the `waiting` gauge already counts it).
    pub counters: Arc<TenantCounters>,
    /// Its runner's decoding state, made at submission (off the core's thread).
    pub decoding: D,
    /// An earlier job of the same submission with the same prompt, whose KV blocks this one
    /// shares.
    pub fork_of: Option<SequenceId>,
    /// The root key of its prefix-cache scope (`None`: the cache is off).
    pub cache_root: Option<BlockHash>,
    /// The LoRA adapter its projections add, if any.
    pub adapter: Option<crate::sequence::AdapterSlot>,
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

/// The submitting side of a running request core.
pub struct CoreHandle<D> {
    jobs: crossbeam_channel::Sender<Vec<Job<D>>>,
    arrivals: Arc<Arrivals>,
    capacity_tokens: usize,
    records: Option<crossbeam_channel::Receiver<StepRecord>>,
}

impl<D> CoreHandle<D> {
    /// Queues `jobs` together (one step never sees only some of them); gives them back if the
    /// core is gone.
    pub fn submit(&self, jobs: Vec<Job<D>>) -> Result<(), Vec<Job<D>>> {
        let highest = jobs.iter().map(|j| j.request.share.priority).max();
        self.jobs.send(jobs).map_err(|e| e.0)?;
        // Raised after the send: a step that sees it will find the jobs in the queue.
        if let Some(class) = highest {
            self.arrivals.arrived(class);
        }
        Ok(())
    }

    /// Positions the KV pool holds: no sequence may ever need more.
    pub fn capacity_tokens(&self) -> usize {
        self.capacity_tokens
    }

    /// Records of every step so far, when the core was configured with `record_steps`.
    pub fn step_records(&self) -> Vec<StepRecord> {
        let records = self.records.as_ref();
        records
            .map(|rx| rx.try_iter().collect())
            .unwrap_or_default()
    }
}

/// The core's thread state.
pub struct RequestCore<R: ModelRunner> {
    runner: R,
    scheduler: Scheduler<R::Decoding>,
    counters: Arc<EngineCounters>,
    arrivals: Arc<Arrivals>,
    records: Option<crossbeam_channel::Sender<StepRecord>>,
    steps: u64,
    pause_for_higher_class: bool,
}

/// Blocks in a pool of `config.kv_cache_tokens` positions (the context length if unset).
pub fn num_blocks(config: &CoreConfig, context_length: usize) -> usize {
    let tokens = config.kv_cache_tokens.unwrap_or(context_length);
    blocks_for(tokens, config.block_size).max(1)
}

impl<R: ModelRunner> RequestCore<R> {
    /// Starts a core over `runner`, whose KV pool has `num_blocks` blocks, on a thread named
    /// `name`; returns the handle submitters use.
    pub fn start(
        name: String,
        runner: R,
        num_blocks: usize,
        config: &CoreConfig,
        counters: Arc<EngineCounters>,
    ) -> std::io::Result<CoreHandle<R::Decoding>> {
        let (records, records_rx) = match config.record_steps {
            true => {
                let (tx, rx) = crossbeam_channel::unbounded();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
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
        let arrivals = Arc::new(Arrivals::default());
        let core = Self {
            runner,
            scheduler: Scheduler::new(limits, num_blocks),
            counters,
            arrivals: arrivals.clone(),
            records,
            steps: 0,
            pause_for_higher_class: config.pause_for_higher_class,
        };
        let capacity_tokens = core.scheduler.capacity_tokens();
        let (jobs, queue) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || core.run(queue))?;
        Ok(CoreHandle {
            jobs,
            arrivals,
            capacity_tokens,
            records: records_rx,
        })
    }

    /// Runs until the submission queue is closed and every sequence has ended.
    fn run(mut self, queue: crossbeam_channel::Receiver<Vec<Job<R::Decoding>>>) {
        loop {
            if self.scheduler.is_idle() {
                match queue.recv() {
                    Ok(jobs) => jobs.into_iter().for_each(|job| self.enqueue(job)),
                    Err(_) => return,
                }
            }
            self.drain(&queue);
            self.step(&queue);
        }
    }

    /// Turns a submitted job into a waiting sequence.
    fn enqueue(&mut self, job: Job<R::Decoding>) {
        let mut sequence = Sequence::new(
            job.id,
            job.request.tenant,
            job.prompt_ids,
            job.decoding,
            job.events,
            job.submitted_at,
        );
        sequence.share = job.request.share;
        sequence.project_share = job.request.project_share.clone();
        sequence.counters = job.counters;
        sequence.fork_of = job.fork_of;
        sequence.cache_root = job.cache_root;
        sequence.adapter = job.adapter;
        let prompt_tokens = sequence.prompt_ids.len() as u64;
        self.counters
            .prompt_tokens
            .fetch_add(prompt_tokens, Ordering::Relaxed);
        self.scheduler.enqueue(sequence);
    }

    /// Enqueues every job submitted so far.
    fn drain(&mut self, queue: &crossbeam_channel::Receiver<Vec<Job<R::Decoding>>>) {
        self.arrivals.take();
        while let Ok(jobs) = queue.try_recv() {
            jobs.into_iter().for_each(|job| self.enqueue(job));
        }
    }

    /// One scheduling step and forward pass.
    fn step(&mut self, queue: &crossbeam_channel::Receiver<Vec<Job<R::Decoding>>>) {
        let mut ended = self.scheduler.remove_cancelled();
        let cancelled = ended.len() as u64;
        self.counters
            .cancelled
            .fetch_add(cancelled, Ordering::Relaxed);
        let plan = self.scheduler.plan();
        if !plan.preempted.is_empty() {
            tracing::debug!(sequences = ?plan.preempted, "preempted: KV blocks exhausted");
        }
        let preempted = plan.preempted.len() as u64;
        self.counters
            .preemptions
            .fetch_add(preempted, Ordering::Relaxed);
        let mut beside = Vec::new();
        if !plan.chunks.is_empty() {
            ended.extend(self.execute(&plan, queue, &mut beside));
        }
        for (step, plan, ended) in beside {
            self.publish(step, &plan, ended);
        }
        self.publish(self.steps, &plan, ended);
    }

    /// Has the runner run the planned chunks, and samples where a prompt or decode ends. While
    /// the runner has the step paused, steps run beside it (see the module's documentation);
    /// their plans and outcomes go to `beside` to be published. Returns the sequences that
    /// ended.
    fn execute(
        &mut self,
        plan: &StepPlan,
        queue: &crossbeam_channel::Receiver<Vec<Job<R::Decoding>>>,
        beside: &mut Vec<(u64, StepPlan, Vec<SequenceId>)>,
    ) -> Vec<SequenceId> {
        let input = self.scheduler.step_input(plan);
        let in_flight = self.scheduler.highest_class(plan);
        let arrivals = self.arrivals.clone();
        let pausable = self.pause_for_higher_class && in_flight < Priority::HIGHEST_FIRST[0];
        let mut pause = match pausable {
            true => PausePoint::for_arrivals(&arrivals, in_flight),
            false => PausePoint::never(),
        };
        let paused_len = self.scheduler.running_len();
        let mut progress = self.runner.start(input, &pause);
        let logits = loop {
            match progress {
                Ok(Progress::Paused) => {
                    self.drain(queue);
                    self.step_beside(in_flight, paused_len, beside);
                    pause.keep_pausing = self.scheduler.running_len() > paused_len;
                    progress = self.runner.resume(&pause);
                }
                Ok(Progress::Done(logits)) => break Ok(logits),
                Err(e) => break Err(e),
            }
        };
        self.scheduler.advance(plan);
        self.steps += 1;
        self.settle(plan, logits)
    }

    /// A step run while the step in flight is paused: the sequences started during this pause
    /// get their next token, and arrivals of a class above `in_flight` that fit without
    /// preemption start (see [`Scheduler::plan_beside`]).
    fn step_beside(
        &mut self,
        in_flight: Priority,
        paused_len: usize,
        done: &mut Vec<(u64, StepPlan, Vec<SequenceId>)>,
    ) {
        let plan = self.scheduler.plan_beside(in_flight, paused_len);
        if plan.chunks.is_empty() {
            if !plan.admitted.is_empty() {
                self.steps += 1;
                done.push((self.steps, plan, Vec::new()));
            }
            return;
        }
        let logits = self.runner.run_beside(self.scheduler.step_input(&plan));
        self.scheduler.advance(&plan);
        self.steps += 1;
        let ended = self.settle(&plan, logits);
        done.push((self.steps, plan, ended));
    }

    /// After a forward pass: counts the step, samples where logits came back, streams the
    /// tokens, and takes finished (or, if the pass failed, all planned) sequences out of the
    /// batch. Returns the sequences that ended.
    fn settle(
        &mut self,
        plan: &StepPlan,
        logits: Result<R::Logits, EngineError>,
    ) -> Vec<SequenceId> {
        let batch_tokens: usize = plan.chunks.iter().map(|c| c.tokens).sum();
        self.counters.steps.fetch_add(1, Ordering::Relaxed);
        self.counters
            .batch_tokens
            .fetch_add(batch_tokens as u64, Ordering::Relaxed);
        self.scheduler.count_service(plan);
        let logits = match logits {
            Ok(logits) => logits,
            Err(e) => {
                // A failed pass leaves the planned sequences' caches unknown: end them all.
                tracing::error!(error = %e, "forward pass failed");
                let ended = self.scheduler.fail_planned(plan, &e);
                let failed = ended.len() as u64;
                self.counters.failed.fetch_add(failed, Ordering::Relaxed);
                return ended;
            }
        };
        // Full blocks just computed join the prefix cache before anything ends and frees them.
        self.scheduler.register_planned(plan);
        let (sampling, mut decodings) = self.scheduler.sampling_decodings(plan);
        let sampled = self.runner.sample(&logits, &mut decodings);
        drop(decodings);
        let mut ending = Vec::new();
        for (index, outcome) in sampling.into_iter().zip(sampled) {
            self.counters
                .generated_tokens
                .fetch_add(1, Ordering::Relaxed);
            let sequence = self.scheduler.running_mut(index);
            match outcome {
                Ok(token) => {
                    if sequence.accept(token) == Next::Finished {
                        self.counters.finished.fetch_add(1, Ordering::Relaxed);
                        ending.push(index);
                    }
                }
                Err(e) => {
                    sequence.fail_with(&e);
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    ending.push(index);
                }
            }
        }
        // Finished sequences' blocks are freed in this same step.
        self.scheduler.finish_all(ending)
    }

    /// Updates the gauges and, when asked for, records step number `step`.
    fn publish(&mut self, step: u64, plan: &StepPlan, ended: Vec<SequenceId>) {
        let s = &self.scheduler;
        let gauges = s.gauges();
        let c = &self.counters;
        c.running.store(gauges.running as u64, Ordering::Relaxed);
        c.waiting.store(gauges.waiting as u64, Ordering::Relaxed);
        let active = (gauges.running + gauges.waiting) as u64;
        c.active.store(active, Ordering::Relaxed);
        c.kv_blocks_free
            .store(gauges.free_blocks as u64, Ordering::Relaxed);
        c.kv_blocks_cached
            .store(gauges.cached_blocks as u64, Ordering::Relaxed);
        c.prefix_query_tokens
            .store(gauges.prefix_query_tokens, Ordering::Relaxed);
        c.prefix_hit_tokens
            .store(gauges.prefix_hit_tokens, Ordering::Relaxed);
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
            free_blocks: gauges.free_blocks,
            running: gauges.running,
            waiting: gauges.waiting,
            backlogged: plan.backlogged.clone(),
        });
    }
}

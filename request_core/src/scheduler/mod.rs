//! Which sequences run in the next step, and with how many tokens.
//!
//! Classes are planned highest first ([`Priority::HIGHEST_FIRST`]); while a higher class has
//! tokens in the step, lower classes share at most `lower_class_step_tokens` of it, so an
//! interactive sequence's steps stay short however much batch work waits. Inside a class, every
//! step: (1) each running sequence that is decoding gets one token, least recently served first;
//! when one needs a new KV block and none is free, the youngest sequence of the lowest class is
//! preempted (its blocks freed, itself re-queued at the front to be recomputed); (2) sequences
//! part-way through their prompt get a chunk, within the token budget and the free blocks;
//! (3) waiting sequences are admitted, the next one from the least-served tenant (see
//! [`policies::VirtualTokenCounters`]), while there is room in the batch, the budget and the blocks for its
//! whole prompt. When there is no room, the engine makes it: a lower class's youngest sequence
//! is preempted, or, inside the class, the youngest of the tenant that holds the most running
//! slots for its weight, as long as it keeps at least as many as the newcomer's tenant will
//! have (so two tenants never take slots back and forth). Decodes come first so a long prompt
//! never stalls the others' tokens.
//!
//! Per-tenant caps (`max_running_share`, `max_kv_share` of [`policies::Share`]) bound what one
//! tenant holds; a tenant may always run one sequence whatever its caps.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use engine_api::EngineError;
use policies::{Priority, TenantId, VirtualTokenCounters};

use crate::block_pool::BlockAllocator;
use crate::runner::{ChunkInput, StepInput};
use crate::sequence::{Sequence, SequenceId};

mod admit;
mod caps;
mod plan;
mod preempt;
#[cfg(test)]
mod tests;

/// Scheduling limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerLimits {
    /// Tokens per forward pass, decodes and prefill chunks together.
    pub max_batch_tokens: usize,
    /// Sequences in the running batch.
    pub max_running: usize,
    /// Largest prompt chunk one sequence gets in one step.
    pub prefill_chunk: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// Admit by virtual token counters across tenants, and preempt for a tenant short of its
    /// share of slots; off: first come, first served (priority classes still hold).
    pub fair_share: bool,
    /// Tokens per step that lower classes may use while a higher class has tokens in the step
    /// (`None`: no limit, lower classes fill the step).
    pub lower_class_step_tokens: Option<usize>,
    /// Running slots that only the highest class may take: an interactive arrival finds one
    /// free, so it can start inside a paused batch step instead of waiting for its end.
    pub reserved_interactive_slots: usize,
}

/// One sequence's share of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChunk {
    /// Index into the running batch: valid for the plan's own step only (the scheduler's
    /// methods that take a plan use it; nothing outside the crate sees it).
    pub(crate) index: usize,
    /// The sequence.
    pub sequence: SequenceId,
    /// Its tenant (charged for the tokens).
    pub tenant: TenantId,
    /// Tokens it runs in the step.
    pub tokens: usize,
    /// Prompt (or recompute) tokens rather than one decode token.
    pub prefill: bool,
    /// Whether its last token's logits are sampled (it ends a prompt, or decodes).
    pub samples: bool,
}

/// The outcome of planning one step.
#[derive(Debug, Default)]
pub struct StepPlan {
    /// In `running` order.
    pub chunks: Vec<PlannedChunk>,
    /// Sequences preempted to make room (re-queued to be recomputed).
    pub preempted: Vec<SequenceId>,
    /// Sequences moved from waiting to running.
    pub admitted: Vec<SequenceId>,
    /// Tenants with sequences waiting when planning began.
    pub backlogged: Vec<TenantId>,
}

/// The step being planned.
#[derive(Default)]
struct Draft {
    /// `(sequence, tokens)` planned so far.
    chunks: Vec<(SequenceId, usize)>,
    /// Tokens left in the step.
    left: usize,
    /// Tokens left to the class being planned (at most `left`).
    class_left: usize,
    plan: StepPlan,
}

impl Draft {
    fn is_planned(&self, id: SequenceId) -> bool {
        self.chunks.iter().any(|(c, _)| *c == id)
    }
}

/// Owns the waiting queue, the running batch and the block pool's bookkeeping; `D` is the
/// runner's decoding state each sequence carries.
pub struct Scheduler<D> {
    /// Batch and token limits.
    limits: SchedulerLimits,
    /// The KV pool's free list.
    allocator: BlockAllocator,
    /// Sequences not admitted yet, oldest first (preempted ones at the front).
    waiting: VecDeque<Sequence<D>>,
    /// In admission order (oldest first).
    running: Vec<Sequence<D>>,
    next_admission: u64,
    /// Steps planned so far.
    step: u64,
    /// Service received per tenant, for fair admission.
    fair_share: VirtualTokenCounters,
    /// Service received per group inside its tenant (a project, or the tenant's requests of
    /// no project), for fair admission among the tenant's own sequences.
    group_share: VirtualTokenCounters,
    /// Prompt tokens looked up in the prefix cache so far (at first admissions).
    prefix_query_tokens: u64,
    /// Of those, tokens found there.
    prefix_hit_tokens: u64,
}

/// The figures the core publishes after each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    /// Sequences running.
    pub running: usize,
    /// Sequences waiting.
    pub waiting: usize,
    /// Free KV blocks (cached ones included).
    pub free_blocks: usize,
    /// Free blocks that keep a cached prefix.
    pub cached_blocks: usize,
    /// Prompt tokens looked up in the prefix cache so far.
    pub prefix_query_tokens: u64,
    /// Of those, tokens found there.
    pub prefix_hit_tokens: u64,
}

impl<D> Scheduler<D> {
    /// A scheduler with nothing to run over a pool of `num_blocks` KV blocks.
    pub fn new(limits: SchedulerLimits, num_blocks: usize) -> Self {
        Self {
            limits,
            allocator: BlockAllocator::new(num_blocks),
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_admission: 0,
            step: 0,
            fair_share: VirtualTokenCounters::default(),
            group_share: VirtualTokenCounters::default(),
            prefix_query_tokens: 0,
            prefix_hit_tokens: 0,
        }
    }

    /// Nothing running and nothing waiting.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Positions the whole pool can hold: no sequence may ever need more.
    pub fn capacity_tokens(&self) -> usize {
        self.allocator.total() * self.limits.block_size
    }

    /// Queues a new sequence (lifting its tenant's fair-share counter if it was idle, and its
    /// group's inside the tenant likewise). Its tenant's `waiting` gauge was raised when it was
    /// submitted.
    pub fn enqueue(&mut self, sequence: Sequence<D>) {
        let tenant = sequence.tenant.as_str();
        let present = |s: &Sequence<D>| s.tenant.as_str() == tenant;
        if !self.waiting.iter().any(present) && !self.running.iter().any(present) {
            let active: Vec<&str> = self
                .waiting
                .iter()
                .chain(&self.running)
                .map(|s| s.tenant.as_str())
                .collect();
            self.fair_share.activate(tenant, active.into_iter());
        }
        let group = sequence.share_group().0;
        let in_group = |s: &&Sequence<D>| s.share_group().0 == group;
        let of_tenant = self
            .waiting
            .iter()
            .chain(&self.running)
            .filter(|s| present(s));
        if !of_tenant.clone().any(|s| in_group(&s)) {
            let active: Vec<&str> = of_tenant.map(|s| s.share_group().0).collect();
            self.group_share.activate(group, active.into_iter());
        }
        self.waiting.push_back(sequence);
    }

    /// Removes every sequence whose client went away, freeing its blocks; returns their ids.
    pub fn remove_cancelled(&mut self) -> Vec<SequenceId> {
        let mut ended = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].is_cancelled() {
                ended.push(self.finish(i).id);
            } else {
                i += 1;
            }
        }
        self.waiting.retain(|s| {
            let cancelled = s.is_cancelled();
            if cancelled {
                s.counters.waiting.fetch_sub(1, Ordering::Relaxed);
                ended.push(s.id);
            }
            !cancelled
        });
        ended
    }

    /// Takes running sequence `i` out of the batch (it finished, failed or was cancelled) and
    /// frees its blocks.
    pub fn finish(&mut self, i: usize) -> Sequence<D> {
        let mut sequence = self.running.remove(i);
        self.release(&mut sequence);
        sequence.counters.running.fetch_sub(1, Ordering::Relaxed);
        sequence
    }

    /// Frees a sequence's blocks, last first (see [`BlockAllocator::release`]); registered
    /// ones stay in the prefix cache.
    fn release(&mut self, sequence: &mut Sequence<D>) {
        let table = std::mem::take(&mut sequence.table);
        sequence.registered_blocks = 0;
        self.allocator.release(table.blocks.into_iter().rev());
    }

    fn index_of(&self, id: SequenceId) -> Option<usize> {
        self.running.iter().position(|s| s.id == id)
    }

    /// Sequences in the running batch.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Running sequence `index` (an index from a plan of this step).
    pub(crate) fn running_mut(&mut self, index: usize) -> &mut Sequence<D> {
        &mut self.running[index]
    }

    /// What the core publishes after a step.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            running: self.running.len(),
            waiting: self.waiting.len(),
            free_blocks: self.allocator.free_count(),
            cached_blocks: self.allocator.cached_count(),
            prefix_query_tokens: self.prefix_query_tokens,
            prefix_hit_tokens: self.prefix_hit_tokens,
        }
    }

    /// The highest class with tokens in `plan`.
    pub fn highest_class(&self, plan: &StepPlan) -> Priority {
        let classes = plan
            .chunks
            .iter()
            .map(|c| self.running[c.index].share.priority);
        classes.max().unwrap_or_default()
    }

    /// What the runner gets for `plan`: each chunk's tokens, a copy of its block table, and
    /// whether it samples.
    pub fn step_input(&self, plan: &StepPlan) -> StepInput {
        let chunks = plan.chunks.iter().map(|c| {
            let s = &self.running[c.index];
            ChunkInput {
                adapter: s.adapter,
                sequence: s.id,
                tokens: s.next_tokens(c.tokens),
                table: s.table.clone(),
                samples: c.samples,
            }
        });
        StepInput {
            chunks: chunks.collect(),
        }
    }

    /// Records that `plan` ran: each planned sequence computed its chunk's positions.
    pub fn advance(&mut self, plan: &StepPlan) {
        for c in &plan.chunks {
            self.running[c.index].table.len += c.tokens;
        }
    }

    /// Charges each planned sequence's tenant counters with the tokens it ran.
    pub fn count_service(&self, plan: &StepPlan) {
        for c in &plan.chunks {
            let counters = &self.running[c.index].counters;
            counters
                .service_tokens
                .fetch_add(c.tokens as u64, Ordering::Relaxed);
        }
    }

    /// Ends every planned sequence with `error` (a failed pass leaves their caches unknown);
    /// returns them.
    pub fn fail_planned(&mut self, plan: &StepPlan, error: &EngineError) -> Vec<SequenceId> {
        let indices: Vec<usize> = plan.chunks.iter().map(|c| c.index).collect();
        for &i in &indices {
            self.running[i].fail_with(error);
        }
        self.finish_all(indices)
    }

    /// Registers the full blocks each planned sequence just computed in the prefix cache.
    pub fn register_planned(&mut self, plan: &StepPlan) {
        for c in &plan.chunks {
            self.register_computed(c.index);
        }
    }

    /// The running index and the decoding state of each planned sequence that samples, in
    /// the order of the logits' rows.
    pub fn sampling_decodings(&mut self, plan: &StepPlan) -> (Vec<usize>, Vec<&mut D>) {
        let indices: Vec<usize> = plan
            .chunks
            .iter()
            .filter(|c| c.samples)
            .map(|c| c.index)
            .collect();
        let decodings = self
            .running
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| indices.contains(i))
            .map(|(_, s)| &mut s.decoding)
            .collect();
        (indices, decodings)
    }

    /// Takes the running sequences at `indices` out of the batch (highest index first, so
    /// the others hold) and frees their blocks; returns their ids.
    pub fn finish_all(&mut self, mut indices: Vec<usize>) -> Vec<SequenceId> {
        indices.sort_unstable_by(|a, b| b.cmp(a));
        indices.into_iter().map(|i| self.finish(i).id).collect()
    }
}

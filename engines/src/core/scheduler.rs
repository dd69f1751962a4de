//! Which sequences run in the next step, and with how many tokens.
//!
//! Every step: (1) each running sequence that is decoding gets one token, oldest first; when
//! one needs a new KV block and none is free, the most recently admitted sequence is preempted
//! (its blocks freed, itself re-queued at the front to be recomputed); (2) sequences part-way
//! through their prompt get a chunk, within the token budget and the free blocks; (3) waiting
//! sequences are admitted while there is room in the batch, budget and blocks for their whole
//! prompt: preempted ones first, then the next sequence of the least-served tenant (see
//! [`super::fair_share`]). Decodes come first so a long prompt never stalls the others' tokens.

use policies::TenantId;
use std::collections::VecDeque;

use super::block_allocator::{blocks_for, BlockAllocator};
use super::fair_share::VirtualTokenCounters;
use super::sequence::{Sequence, SequenceId};
use crate::model::BlockTable;

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
    /// Admit by virtual token counters across tenants; off: first come, first served.
    pub fair_share: bool,
}

/// One sequence's share of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChunk {
    /// Index into `Scheduler::running` (valid until the running set changes).
    pub index: usize,
    /// The sequence.
    pub sequence: SequenceId,
    /// Its tenant (charged for the tokens).
    pub tenant: TenantId,
    /// Tokens it runs in the step.
    pub tokens: usize,
    /// Prompt (or recompute) tokens rather than one decode token.
    pub prefill: bool,
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

/// Owns the waiting queue, the running batch and the block pool's bookkeeping.
pub struct Scheduler {
    /// Batch and token limits.
    pub limits: SchedulerLimits,
    /// The KV pool's free list.
    pub allocator: BlockAllocator,
    /// Sequences not admitted yet, oldest first.
    pub waiting: VecDeque<Sequence>,
    /// In admission order (oldest first).
    pub running: Vec<Sequence>,
    next_admission: u64,
    /// Service received per tenant, for fair admission.
    pub fair_share: VirtualTokenCounters,
}

impl Scheduler {
    /// A scheduler with nothing to run over a pool of `num_blocks` KV blocks.
    pub fn new(limits: SchedulerLimits, num_blocks: usize) -> Self {
        Self {
            limits,
            allocator: BlockAllocator::new(num_blocks),
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_admission: 0,
            fair_share: VirtualTokenCounters::default(),
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

    /// Queues a new sequence (lifting its tenant's fair-share counter if it was idle).
    pub fn enqueue(&mut self, sequence: Sequence) {
        let tenant = sequence.tenant.as_str();
        let present = |s: &Sequence| s.tenant.as_str() == tenant;
        if !self.waiting.iter().any(present) && !self.running.iter().any(present) {
            let active: Vec<&str> = self
                .waiting
                .iter()
                .chain(&self.running)
                .map(|s| s.tenant.as_str())
                .collect();
            self.fair_share.activate(tenant, active.into_iter());
        }
        self.waiting.push_back(sequence);
    }

    /// Which waiting sequence to admit next: a preempted one (it was running already), else the
    /// oldest of the least-served tenant, else (fair share off) the oldest.
    fn next_waiting(&self) -> Option<usize> {
        let first = self.waiting.front()?;
        if first.preemptions > 0 || !self.limits.fair_share {
            return Some(0);
        }
        let tenant = self
            .fair_share
            .pick(self.waiting.iter().map(|s| s.tenant.as_str()))?;
        self.waiting
            .iter()
            .position(|s| s.tenant.as_str() == tenant)
    }

    /// Frees a sequence's blocks.
    pub fn release(&mut self, sequence: &mut Sequence) {
        let table = std::mem::take(&mut sequence.table);
        self.allocator.release(table.blocks);
    }

    /// Plans the next step; changes the running set (admissions, preemptions) and grows the
    /// block tables of every planned chunk.
    pub fn plan(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.limits.max_batch_tokens;
        for s in &self.waiting {
            if !plan.backlogged.contains(&s.tenant) {
                plan.backlogged.push(s.tenant.clone());
            }
        }
        let mut chunks: Vec<(SequenceId, usize)> = Vec::new();

        // 1. Decodes, oldest first, preempting the youngest when blocks run out.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            if self.running[i].is_prefilling() {
                i += 1;
                continue;
            }
            if self.grow_or_preempt(i, 1, &mut plan.preempted) {
                self.plan_chunk(&mut chunks, i, 1);
                budget -= 1;
                i += 1;
            }
            // Else the sequence at `i` preempted itself and `i` now points past the end.
        }

        // 2. Prompts already admitted continue by chunks that fit the budget and free blocks.
        for i in 0..self.running.len() {
            if budget == 0 {
                break;
            }
            if !self.running[i].is_prefilling() {
                continue;
            }
            budget -= self.plan_prompt_chunk(&mut chunks, i, budget);
        }

        // 3. Admissions, while everything fits.
        while budget > 0 && self.running.len() < self.limits.max_running {
            let Some(index) = self.next_waiting() else {
                break;
            };
            let next = &self.waiting[index];
            // Room for the whole prompt, plus one block of headroom per running sequence so
            // that admitting does not immediately force a preemption.
            let needed =
                blocks_for(next.total_tokens(), self.limits.block_size) + self.running.len();
            if self.allocator.free_count() < needed {
                break;
            }
            let mut sequence = self.waiting.remove(index).expect("index from next_waiting");
            sequence.admission = self.next_admission;
            self.next_admission += 1;
            if sequence.admitted_at.is_none() {
                let now = std::time::Instant::now();
                sequence.admitted_at = Some(now);
                sequence.timing.queue = now - sequence.submitted_at;
            }
            plan.admitted.push(sequence.id);
            self.running.push(sequence);
            let i = self.running.len() - 1;
            budget -= self.plan_prompt_chunk(&mut chunks, i, budget);
        }

        plan.chunks = self
            .running
            .iter()
            .enumerate()
            .filter_map(|(index, s)| {
                let (_, tokens) = chunks.iter().find(|(id, _)| *id == s.id)?;
                Some(PlannedChunk {
                    index,
                    sequence: s.id,
                    tenant: s.tenant.clone(),
                    tokens: *tokens,
                    prefill: s.is_prefilling(),
                })
            })
            .collect();

        plan
    }

    /// Plans the next prompt chunk of running sequence `i`: at most `prefill_chunk` tokens,
    /// within `budget` and the free blocks. Returns the tokens planned.
    fn plan_prompt_chunk(
        &mut self,
        chunks: &mut Vec<(SequenceId, usize)>,
        i: usize,
        budget: usize,
    ) -> usize {
        let want = self.running[i]
            .pending()
            .min(self.limits.prefill_chunk)
            .min(budget);
        let granted = self.grow_within_free(i, want);
        if granted > 0 {
            self.plan_chunk(chunks, i, granted);
        }
        granted
    }

    /// Adds `tokens` of running sequence `i` to the step and charges them to its tenant at once,
    /// so the next admission of the same step already sees the service.
    fn plan_chunk(&mut self, chunks: &mut Vec<(SequenceId, usize)>, i: usize, tokens: usize) {
        let sequence = &self.running[i];
        chunks.push((sequence.id, tokens));
        self.fair_share
            .charge(sequence.tenant.as_str(), tokens, sequence.weight);
    }

    /// Ensures running sequence `i` has blocks for `n` more positions, preempting the youngest
    /// sequences as needed. Returns false if `i` itself had to be preempted.
    fn grow_or_preempt(&mut self, i: usize, n: usize, preempted: &mut Vec<SequenceId>) -> bool {
        let needed = self.blocks_missing(i, n);
        while self.allocator.free_count() < needed {
            let youngest = self.running.len() - 1;
            let victim_is_self = youngest == i;
            self.preempt(youngest, preempted);
            if victim_is_self {
                return false;
            }
        }
        let blocks = self.allocator.allocate(needed).expect("checked above");
        self.running[i].table.blocks.extend(blocks);
        true
    }

    /// Grows running sequence `i` by up to `n` positions within the free blocks; returns how
    /// many positions it may compute.
    fn grow_within_free(&mut self, i: usize, n: usize) -> usize {
        let bs = self.limits.block_size;
        let table = &self.running[i].table;
        let room = table.capacity(bs) - table.len + self.allocator.free_count() * bs;
        let granted = n.min(room);
        let needed = self.blocks_missing(i, granted);
        let blocks = self
            .allocator
            .allocate(needed)
            .expect("within the free blocks");
        self.running[i].table.blocks.extend(blocks);
        granted
    }

    fn blocks_missing(&self, i: usize, n: usize) -> usize {
        let table: &BlockTable = &self.running[i].table;
        blocks_for(table.len + n, self.limits.block_size).saturating_sub(table.blocks.len())
    }

    /// Frees running sequence `i`'s blocks and puts it back at the front of the queue; it will
    /// recompute its prompt and the tokens it generated so far.
    fn preempt(&mut self, i: usize, preempted: &mut Vec<SequenceId>) {
        let mut sequence = self.running.remove(i);
        self.release(&mut sequence);
        sequence.preemptions += 1;
        preempted.push(sequence.id);
        self.waiting.push_front(sequence);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParams;
    use std::time::Instant;

    fn limits() -> SchedulerLimits {
        SchedulerLimits {
            max_batch_tokens: 8,
            max_running: 4,
            prefill_chunk: 4,
            block_size: 2,
            fair_share: true,
        }
    }

    fn sequence(id: SequenceId, prompt: usize) -> Sequence {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::mem::forget(rx); // keep the channel open: the sequence is not cancelled
        Sequence::new(
            id,
            "t".parse().unwrap(),
            vec![1; prompt],
            SamplingParams::greedy(8),
            tx,
            Instant::now(),
        )
    }

    /// `(index, tokens, prefill)` of each chunk.
    fn shape(plan: &StepPlan) -> Vec<(usize, usize, bool)> {
        plan.chunks
            .iter()
            .map(|c| (c.index, c.tokens, c.prefill))
            .collect()
    }

    /// Applies a plan as the engine would after a forward pass (no sampling).
    fn compute(s: &mut Scheduler, plan: &StepPlan) {
        for c in &plan.chunks {
            let seq = &mut s.running[c.index];
            seq.table.len += c.tokens;
            if seq.pending() == 0 {
                seq.generated.push(7);
            }
        }
    }

    #[test]
    fn long_prompts_are_chunked_and_decodes_come_first() {
        let mut s = Scheduler::new(limits(), 64);
        s.enqueue(sequence(1, 2));
        let plan = s.plan();
        assert_eq!(shape(&plan), vec![(0, 2, true)]);
        compute(&mut s, &plan);
        s.enqueue(sequence(2, 10));
        let plan = s.plan();
        // Sequence 1 decodes (1 token), sequence 2 gets a chunk of 4 (prefill_chunk).
        assert_eq!(shape(&plan), vec![(0, 1, false), (1, 4, true)]);
        compute(&mut s, &plan);
        let plan = s.plan();
        assert_eq!(plan.chunks[0].tokens, 1);
        assert_eq!(plan.chunks[1].tokens, 4);
    }

    #[test]
    fn the_token_budget_limits_a_step() {
        let mut s = Scheduler::new(
            SchedulerLimits {
                max_batch_tokens: 5,
                ..limits()
            },
            64,
        );
        for id in 0..3 {
            s.enqueue(sequence(id, 4));
        }
        let plan = s.plan();
        let total: usize = plan.chunks.iter().map(|c| c.tokens).sum();
        assert_eq!(total, 5);
        assert_eq!(plan.admitted, vec![0, 1]);
    }

    #[test]
    fn out_of_blocks_preempts_the_youngest_and_frees_its_blocks() {
        // 6 blocks of 2 positions.
        let mut s = Scheduler::new(limits(), 6);
        s.enqueue(sequence(1, 4));
        s.enqueue(sequence(2, 2));
        let plan = s.plan();
        assert_eq!(plan.admitted, vec![1, 2]);
        compute(&mut s, &plan);
        assert_eq!(s.allocator.free_count(), 3);
        // Decode until sequence 1 can no longer grow without taking sequence 2's blocks.
        let mut preempted = Vec::new();
        for _ in 0..6 {
            let plan = s.plan();
            preempted.extend(plan.preempted.iter().copied());
            compute(&mut s, &plan);
        }
        assert_eq!(
            preempted.first(),
            Some(&2),
            "the most recently admitted goes first"
        );
        let held: usize = s.running.iter().map(|q| q.table.blocks.len()).sum();
        assert_eq!(
            held + s.allocator.free_count(),
            6,
            "no block leaks through preemption"
        );
        let requeued = s
            .waiting
            .iter()
            .find(|q| q.id == 2)
            .map(|q| (q.preemptions, q.table.len));
        if let Some((times, len)) = requeued {
            assert!(times >= 1);
            assert_eq!(len, 0, "a preempted sequence recomputes from scratch");
        }
    }

    #[test]
    fn admission_waits_for_blocks() {
        let mut s = Scheduler::new(limits(), 3);
        s.enqueue(sequence(1, 6)); // needs all 3 blocks
        s.enqueue(sequence(2, 2));
        let plan = s.plan();
        assert_eq!(plan.admitted, vec![1]);
        assert_eq!(s.waiting.len(), 1);
    }
}

//! Admission: which waiting sequence comes next (fair share, caps, forks), and what it finds
//! when it comes in (cached prefix blocks, its sibling's prompt blocks).

use std::sync::atomic::Ordering;
use std::time::Instant;

use policies::Priority;

use super::{Draft, Scheduler};
use crate::block_pool::BlockTable;
use crate::sequence::Sequence;

impl<D> Scheduler<D> {
    /// (3) Admissions of `class`, making room by preemption where the rules allow.
    pub(super) fn plan_admissions(&mut self, class: Priority, draft: &mut Draft) {
        while draft.class_left > 0 {
            let Some(index) = self.next_waiting(class) else {
                break;
            };
            let id = self.waiting[index].id;
            let Some(victims) = self.victims_for(&self.waiting[index]) else {
                break;
            };
            for victim in victims {
                let i = self.index_of(victim).expect("a victim is running");
                self.preempt(i, draft);
            }
            // Preempted sequences went to the front of the queue: find the newcomer again.
            let index = self
                .waiting
                .iter()
                .position(|s| s.id == id)
                .expect("still waiting");
            self.admit(index, draft);
        }
    }

    /// A sequence that shares its prompt with another may be admitted once that one is not
    /// waiting and not part-way through its prompt (or is gone).
    pub(super) fn fork_ready(&self, s: &Sequence<D>) -> bool {
        let Some(parent) = s.fork_of else {
            return true;
        };
        !self.waiting.iter().any(|w| w.id == parent)
            && self
                .running
                .iter()
                .find(|r| r.id == parent)
                .is_none_or(|r| !r.is_prefilling())
    }

    /// A newly admitted sequence takes the full blocks of its prompt from the sequence it
    /// shares the prompt with, if that one holds them: its own prefill is then the prompt's
    /// tail (at least one token, for its first logits).
    pub(super) fn fork(&mut self, sequence: &mut Sequence<D>) {
        let Some(parent) = sequence.fork_of else {
            return;
        };
        let Some(parent) = self.running.iter().find(|r| r.id == parent) else {
            return;
        };
        if !sequence.table.blocks.is_empty() || parent.prompt_ids != sequence.prompt_ids {
            return;
        }
        let shared = (sequence.prompt_ids.len() - 1) / self.limits.block_size;
        if shared == 0 || parent.computed() < shared * self.limits.block_size {
            return;
        }
        let blocks = parent.table.blocks[..shared].to_vec();
        self.allocator.share(&blocks);
        sequence.table = BlockTable {
            blocks,
            len: shared * self.limits.block_size,
        };
    }

    /// Moves waiting sequence `index` into the batch and plans its first prompt chunk.
    pub(super) fn admit(&mut self, index: usize, draft: &mut Draft) {
        let mut sequence = self.waiting.remove(index).expect("index from next_waiting");
        let found = self.reuse_cached(&mut sequence);
        self.fork(&mut sequence);
        sequence.admission = self.next_admission;
        self.next_admission += 1;
        let counters = &sequence.counters;
        counters.waiting.fetch_sub(1, Ordering::Relaxed);
        counters.running.fetch_add(1, Ordering::Relaxed);
        if sequence.admitted_at.is_none() {
            let now = Instant::now();
            sequence.admitted_at = Some(now);
            sequence.timing.queue = now - sequence.submitted_at;
            counters.admitted.fetch_add(1, Ordering::Relaxed);
            counters
                .queue_nanos
                .fetch_add(sequence.timing.queue.as_nanos() as u64, Ordering::Relaxed);
            if sequence.cache_root.is_some() {
                let prompt = sequence.prompt_ids.len();
                sequence.cached_tokens = found.min(prompt);
                let hit = sequence.cached_tokens as u64;
                counters
                    .prefix_query_tokens
                    .fetch_add(prompt as u64, Ordering::Relaxed);
                counters.prefix_hit_tokens.fetch_add(hit, Ordering::Relaxed);
                self.prefix_query_tokens += prompt as u64;
                self.prefix_hit_tokens += hit;
            }
        }
        draft.plan.admitted.push(sequence.id);
        self.running.push(sequence);
        self.plan_prompt_chunk(draft, self.running.len() - 1);
    }

    /// Which waiting sequence of `class` to admit next: the first (preempted ones are at the
    /// front) of the least-served group (project) of the least-served tenant not at its caps,
    /// else (fair share off) the oldest.
    pub(super) fn next_waiting(&self, class: Priority) -> Option<usize> {
        let eligible =
            |s: &Sequence<D>| s.share.priority == class && !self.at_cap(s) && self.fork_ready(s);
        if !self.limits.fair_share {
            return self.waiting.iter().position(eligible);
        }
        let tenant = self.fair_share.pick(
            self.waiting
                .iter()
                .filter(|s| eligible(s))
                .map(|s| s.tenant.as_str()),
        )?;
        let of_tenant = |s: &&Sequence<D>| s.tenant.as_str() == tenant && eligible(s);
        let group = self.group_share.pick(
            self.waiting
                .iter()
                .filter(of_tenant)
                .map(|s| s.share_group().0),
        )?;
        self.waiting
            .iter()
            .position(|s| of_tenant(&s) && s.share_group().0 == group)
    }

    /// Gives a sequence about to be admitted (holding no block) the longest run of cached
    /// blocks that starts its tokens, within its scope; it computes only the rest, and at least
    /// its last token (for the logits). Returns the positions found.
    pub(super) fn reuse_cached(&mut self, sequence: &mut Sequence<D>) -> usize {
        let bs = self.limits.block_size;
        if sequence.cache_root.is_none() || !sequence.table.blocks.is_empty() {
            return 0;
        }
        let reusable = sequence.total_tokens().saturating_sub(1) / bs;
        let mut blocks = Vec::new();
        for k in 0..reusable {
            let key = sequence.block_key(k, bs).expect("the cache is on for it");
            match self.allocator.take_cached(key) {
                Some(block) => blocks.push(block),
                None => break,
            }
        }
        let found = blocks.len() * bs;
        sequence.registered_blocks = blocks.len();
        sequence.table = BlockTable { blocks, len: found };
        found
    }

    /// Registers in the prefix cache every block of running sequence `i` that is full and
    /// computed (called after each forward pass): from then on a sequence of the same scope
    /// whose tokens start alike reuses it.
    pub fn register_computed(&mut self, i: usize) {
        let bs = self.limits.block_size;
        let s = &mut self.running[i];
        if s.cache_root.is_none() {
            return;
        }
        let full = (s.computed() / bs).min(s.table.blocks.len());
        while s.registered_blocks < full {
            let k = s.registered_blocks;
            let key = s.block_key(k, bs).expect("the cache is on for it");
            self.allocator.register(s.table.blocks[k], key);
            s.registered_blocks += 1;
        }
    }
}

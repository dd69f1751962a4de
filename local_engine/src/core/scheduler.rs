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

use policies::{Priority, Share, TenantId, VirtualTokenCounters};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::block_allocator::{blocks_for, BlockAllocator};
use super::sequence::{Sequence, SequenceId};
use models::BlockTable;

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

/// Owns the waiting queue, the running batch and the block pool's bookkeeping.
pub struct Scheduler {
    /// Batch and token limits.
    pub limits: SchedulerLimits,
    /// The KV pool's free list.
    pub allocator: BlockAllocator,
    /// Sequences not admitted yet, oldest first (preempted ones at the front).
    pub waiting: VecDeque<Sequence>,
    /// In admission order (oldest first).
    pub running: Vec<Sequence>,
    next_admission: u64,
    /// Steps planned so far.
    step: u64,
    /// Service received per tenant, for fair admission.
    pub fair_share: VirtualTokenCounters,
    /// Prompt tokens looked up in the prefix cache so far (at first admissions).
    pub prefix_query_tokens: u64,
    /// Of those, tokens found there.
    pub prefix_hit_tokens: u64,
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
            step: 0,
            fair_share: VirtualTokenCounters::default(),
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

    /// Queues a new sequence (lifting its tenant's fair-share counter if it was idle). Its
    /// tenant's `waiting` gauge was raised when it was submitted.
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
    pub fn finish(&mut self, i: usize) -> Sequence {
        let mut sequence = self.running.remove(i);
        self.release(&mut sequence);
        sequence.counters.running.fetch_sub(1, Ordering::Relaxed);
        sequence
    }

    /// Frees a sequence's blocks, last first (see [`BlockAllocator::release`]); registered
    /// ones stay in the prefix cache.
    fn release(&mut self, sequence: &mut Sequence) {
        let table = std::mem::take(&mut sequence.table);
        sequence.registered_blocks = 0;
        self.allocator.release(table.blocks.into_iter().rev());
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

    /// Gives a sequence about to be admitted (holding no block) the longest run of cached
    /// blocks that starts its tokens, within its scope; it computes only the rest, and at least
    /// its last token (for the logits). Returns the positions found.
    fn reuse_cached(&mut self, sequence: &mut Sequence) -> usize {
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

    fn index_of(&self, id: SequenceId) -> Option<usize> {
        self.running.iter().position(|s| s.id == id)
    }

    /// Plans the next step; changes the running set (admissions, preemptions) and grows the
    /// block tables of every planned chunk.
    pub fn plan(&mut self) -> StepPlan {
        self.step += 1;
        let mut draft = Draft {
            left: self.limits.max_batch_tokens,
            ..Draft::default()
        };
        for s in &self.waiting {
            if !draft.plan.backlogged.contains(&s.tenant) {
                draft.plan.backlogged.push(s.tenant.clone());
            }
        }
        let mut higher_class_planned = false;
        for class in Priority::HIGHEST_FIRST {
            draft.class_left = match (higher_class_planned, self.limits.lower_class_step_tokens) {
                (true, Some(cap)) => draft.left.min(cap),
                _ => draft.left,
            };
            self.plan_decodes(class, &mut draft);
            self.plan_prompts(class, &mut draft);
            self.plan_admissions(class, &mut draft);
            higher_class_planned |= self
                .running
                .iter()
                .any(|s| s.share.priority == class && draft.is_planned(s.id));
        }

        self.finish_plan(draft, 0)
    }

    /// The plan of `draft`: a chunk for each planned sequence from index `from` of `running`
    /// on, in `running` order, each marked as served at this step.
    fn finish_plan(&mut self, mut draft: Draft, from: usize) -> StepPlan {
        let step = self.step;
        let mut plan = std::mem::take(&mut draft.plan);
        plan.chunks = (from..self.running.len())
            .filter_map(|index| {
                let s = &mut self.running[index];
                let (_, tokens) = draft.chunks.iter().find(|(id, _)| *id == s.id)?;
                s.last_step = step;
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

    /// Whether a sequence of a class above `class` waits (for [`Self::plan_urgent`]).
    pub fn waits_above(&self, class: Priority) -> bool {
        self.waiting.iter().any(|s| s.share.priority > class)
    }

    /// Plans a step to run while the step in flight is paused between layers. The sequences
    /// from `paused_len` on in `running` were admitted during this pause: each gets its next
    /// token (or prompt chunk), so its stream does not wait for the rest of the paused step;
    /// then waiting sequences of classes above `in_flight` (the highest class in the paused
    /// step) are admitted if they fit as they are, each with its first prompt chunk. Nothing
    /// is preempted and no sequence of the paused step changes, so its chunks stay valid;
    /// admitted sequences go to the end of `running`, after every index the paused step uses.
    pub fn plan_urgent(&mut self, in_flight: Priority, paused_len: usize) -> StepPlan {
        self.step += 1;
        let mut draft = Draft {
            left: self.limits.max_batch_tokens,
            ..Draft::default()
        };
        for i in paused_len..self.running.len() {
            draft.class_left = draft.left;
            if self.running[i].is_prefilling() {
                self.plan_prompt_chunk(&mut draft, i);
            } else if self.grow_within_free(i, 1) == 1 {
                let id = self.running[i].id;
                self.plan_chunk(&mut draft, id, 1);
            }
        }
        for class in Priority::HIGHEST_FIRST {
            if class <= in_flight {
                break;
            }
            draft.class_left = draft.left;
            while draft.class_left > 0 {
                let Some(index) = self.next_waiting(class) else {
                    break;
                };
                // Only what fits without preemption: a victim could be in the paused step.
                if !self
                    .victims_for(&self.waiting[index])
                    .is_some_and(|victims| victims.is_empty())
                {
                    break;
                }
                self.admit(index, &mut draft);
            }
        }
        self.finish_plan(draft, paused_len)
    }

    /// (1) One token for each decoding sequence of `class`, least recently served first.
    fn plan_decodes(&mut self, class: Priority, draft: &mut Draft) {
        let mut order: Vec<(u64, u64, SequenceId)> = self
            .running
            .iter()
            .filter(|s| s.share.priority == class && !s.is_prefilling())
            .map(|s| (s.last_step, s.admission, s.id))
            .collect();
        order.sort_unstable();
        for (_, _, id) in order {
            if draft.class_left == 0 {
                break;
            }
            // An earlier growth may have preempted it.
            let Some(i) = self.index_of(id) else { continue };
            if self.grow_or_preempt(i, 1, draft) {
                self.plan_chunk(draft, id, 1);
            }
        }
    }

    /// (2) Prompts of `class` already admitted continue by chunks, oldest first.
    fn plan_prompts(&mut self, class: Priority, draft: &mut Draft) {
        let ids: Vec<SequenceId> = self
            .running
            .iter()
            .filter(|s| s.share.priority == class && s.is_prefilling() && !draft.is_planned(s.id))
            .map(|s| s.id)
            .collect();
        for id in ids {
            if draft.class_left == 0 {
                break;
            }
            // A prompt that finds no free block takes one from the youngest of the lowest class,
            // as a decode does: prompts part-way through must not wait on each other for ever.
            // Its tenant's own youngest gives way when the tenant's KV cap is what stops it.
            while let Some(i) = self.index_of(id) {
                if self.plan_prompt_chunk(draft, i) > 0 {
                    break;
                }
                match self.victim_to_grow(i, 1) {
                    Some(victim) if self.running[victim].id != id => self.preempt(victim, draft),
                    _ => break,
                }
            }
        }
    }

    /// (3) Admissions of `class`, making room by preemption where the rules allow.
    fn plan_admissions(&mut self, class: Priority, draft: &mut Draft) {
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
    fn fork_ready(&self, s: &Sequence) -> bool {
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
    fn fork(&mut self, sequence: &mut Sequence) {
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
    fn admit(&mut self, index: usize, draft: &mut Draft) {
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
    /// front) of the least-served tenant not at its caps, else (fair share off) the oldest.
    fn next_waiting(&self, class: Priority) -> Option<usize> {
        let eligible =
            |s: &Sequence| s.share.priority == class && !self.at_cap(s) && self.fork_ready(s);
        if !self.limits.fair_share {
            return self.waiting.iter().position(eligible);
        }
        let tenant = self.fair_share.pick(
            self.waiting
                .iter()
                .filter(|s| eligible(s))
                .map(|s| s.tenant.as_str()),
        )?;
        self.waiting
            .iter()
            .position(|s| s.tenant.as_str() == tenant && eligible(s))
    }

    /// Sequences and blocks `tenant` holds in the batch.
    fn held_by(&self, tenant: &TenantId) -> (usize, usize) {
        self.running
            .iter()
            .filter(|s| &s.tenant == tenant)
            .fold((0, 0), |(n, b), s| (n + 1, b + s.table.blocks.len()))
    }

    /// Blocks `tenant`'s running sequences hold or will need for the rest of their prompts.
    fn committed_to(&self, tenant: &TenantId) -> usize {
        self.running
            .iter()
            .filter(|s| &s.tenant == tenant)
            .map(|s| {
                s.table
                    .blocks
                    .len()
                    .max(blocks_for(s.total_tokens(), self.limits.block_size))
            })
            .sum()
    }

    /// Admitting `s` would take its tenant past its share of slots or KV blocks (a tenant with
    /// nothing running is never at its cap).
    fn at_cap(&self, s: &Sequence) -> bool {
        let (running, _) = self.held_by(&s.tenant);
        if running == 0 {
            return false;
        }
        let slots = Share::cap(s.share.max_running_share, self.limits.max_running);
        let kv = Share::cap(s.share.max_kv_share, self.allocator.total());
        running >= slots
            || (s.share.max_kv_share.is_some()
                && self.committed_to(&s.tenant)
                    + blocks_for(s.total_tokens(), self.limits.block_size)
                    > kv)
    }

    /// The running sequences to preempt so that `newcomer` fits (empty: it fits already), or
    /// `None` if the rules allow no room for it. Lower classes give way first, youngest first;
    /// inside the class, a tenant gives a slot only while it keeps at least as many for its
    /// weight as the newcomer's tenant will have, and only if it is not less served.
    fn victims_for(&self, newcomer: &Sequence) -> Option<Vec<SequenceId>> {
        let class = newcomer.share.priority;
        let prompt_blocks = blocks_for(newcomer.total_tokens(), self.limits.block_size);
        let mut free = self.allocator.free_count();
        let mut running = self.running.len();
        let owed_to = |s: &Sequence| {
            blocks_for(s.total_tokens(), self.limits.block_size)
                .saturating_sub(s.table.blocks.len())
        };
        // Blocks that prompts part-way through still need: promised already.
        let mut owed: usize = self
            .running
            .iter()
            .filter(|s| s.is_prefilling())
            .map(owed_to)
            .sum();
        // Room for the whole prompt, plus one block of headroom per running sequence so that
        // admitting does not immediately force a growth preemption.
        let max_running = self.max_running_of(class);
        let fits = |free: usize, owed: usize, running: usize| {
            running < max_running && free >= prompt_blocks + owed + running
        };
        let mut slots: HashMap<&TenantId, (usize, f64)> = HashMap::new();
        for s in self.running.iter().filter(|s| s.share.priority == class) {
            slots.entry(&s.tenant).or_insert((0, s.share.weight)).0 += 1;
        }
        let mut taken: HashSet<SequenceId> = HashSet::new();
        let mut victims = Vec::new();
        while !fits(free, owed, running) {
            let lower = self
                .running
                .iter()
                .filter(|s| s.share.priority < class && !taken.contains(&s.id))
                .max_by_key(|s| (std::cmp::Reverse(s.share.priority), s.admission));
            let victim = match lower {
                Some(v) => v,
                None if !self.limits.fair_share => return None,
                None => {
                    let mine = slots.get(&newcomer.tenant).map_or(0, |(n, _)| *n);
                    let after = (mine + 1) as f64 / newcomer.share.weight.max(1e-6);
                    let newcomer_served = self.fair_share.get(newcomer.tenant.as_str());
                    let (tenant, _) = slots
                        .iter()
                        .filter(|(t, (n, w))| {
                            **t != &newcomer.tenant
                                && *n > 0
                                && (*n - 1) as f64 / w.max(1e-6) >= after
                                && self.fair_share.get(t.as_str()) >= newcomer_served
                        })
                        .max_by(|(_, (a, wa)), (_, (b, wb))| {
                            (*a as f64 / wa.max(1e-6)).total_cmp(&(*b as f64 / wb.max(1e-6)))
                        })?;
                    let tenant = *tenant;
                    self.running
                        .iter()
                        .filter(|s| {
                            &s.tenant == tenant
                                && s.share.priority == class
                                && !taken.contains(&s.id)
                        })
                        .max_by_key(|s| s.admission)?
                }
            };
            if victim.share.priority == class {
                if let Some((n, _)) = slots.get_mut(&victim.tenant) {
                    *n -= 1;
                }
            }
            taken.insert(victim.id);
            victims.push(victim.id);
            free += victim.table.blocks.len();
            if victim.is_prefilling() {
                owed -= owed_to(victim);
            }
            running -= 1;
        }
        Some(victims)
    }

    /// Slots sequences of `class` may fill: all of them for the highest class, the rest less
    /// the reserve (always at least one).
    fn max_running_of(&self, class: Priority) -> usize {
        if class == Priority::HIGHEST_FIRST[0] {
            self.limits.max_running
        } else {
            self.limits
                .max_running
                .saturating_sub(self.limits.reserved_interactive_slots)
                .max(1)
        }
    }

    /// Plans the next prompt chunk of running sequence `i`: at most `prefill_chunk` tokens,
    /// within the class's budget, the free blocks and its tenant's KV cap. Returns the tokens
    /// planned.
    fn plan_prompt_chunk(&mut self, draft: &mut Draft, i: usize) -> usize {
        let want = self.running[i]
            .pending()
            .min(self.limits.prefill_chunk)
            .min(draft.class_left);
        let granted = self.grow_within_free(i, want);
        if granted > 0 {
            let id = self.running[i].id;
            self.plan_chunk(draft, id, granted);
        }
        granted
    }

    /// Adds `tokens` of sequence `id` to the step and charges them to its tenant at once, so
    /// the next admission of the same step already sees the service.
    fn plan_chunk(&mut self, draft: &mut Draft, id: SequenceId, tokens: usize) {
        let sequence = &self.running[self.index_of(id).expect("planned sequences run")];
        draft.chunks.push((id, tokens));
        draft.left -= tokens;
        draft.class_left -= tokens;
        self.fair_share
            .charge(sequence.tenant.as_str(), tokens, sequence.share.weight);
    }

    /// Ensures running sequence `i` has blocks for `n` more positions, preempting as needed:
    /// the tenant's own youngest if it would pass its KV cap, else the youngest of the lowest
    /// class. Returns false if `i` itself had to be preempted.
    fn grow_or_preempt(&mut self, i: usize, n: usize, draft: &mut Draft) -> bool {
        let id = self.running[i].id;
        loop {
            let i = self.index_of(id).expect("not preempted yet");
            let needed = self.blocks_missing(i, n);
            let Some(victim) = self.victim_to_grow(i, needed) else {
                let blocks = self.allocator.allocate(needed).expect("checked above");
                self.running[i].table.blocks.extend(blocks);
                return true;
            };
            let victim_is_self = self.running[victim].id == id;
            self.preempt(victim, draft);
            if victim_is_self {
                return false;
            }
        }
    }

    /// Who must be preempted before running sequence `i` can take `needed` more blocks: the
    /// tenant's own youngest (perhaps `i`) if it would pass its KV cap, else the youngest of the
    /// lowest class if too few blocks are free; `None`: they can be taken now.
    fn victim_to_grow(&self, i: usize, needed: usize) -> Option<usize> {
        self.over_kv_cap(i, needed)
            .or_else(|| (self.allocator.free_count() < needed).then(|| self.growth_victim()))
    }

    /// The blocks `s`'s tenant holds and its KV cap, when the cap binds: it has one and the
    /// tenant runs other sequences too (one sequence may always run).
    fn kv_cap_of(&self, s: &Sequence) -> Option<(usize, usize)> {
        s.share.max_kv_share?;
        let (running, blocks) = self.held_by(&s.tenant);
        let cap = Share::cap(s.share.max_kv_share, self.allocator.total());
        (running > 1).then_some((blocks, cap))
    }

    /// If growing sequence `i` by `needed` blocks takes its tenant past its KV cap while it runs
    /// other sequences too, the tenant's youngest (perhaps `i` itself).
    fn over_kv_cap(&self, i: usize, needed: usize) -> Option<usize> {
        let s = &self.running[i];
        let (blocks, cap) = self.kv_cap_of(s)?;
        if blocks + needed <= cap {
            return None;
        }
        self.running
            .iter()
            .enumerate()
            .filter(|(_, q)| q.tenant == s.tenant)
            .max_by_key(|(_, q)| q.admission)
            .map(|(j, _)| j)
    }

    /// The sequence to preempt when blocks run out: the youngest of the lowest class.
    fn growth_victim(&self) -> usize {
        self.running
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| (std::cmp::Reverse(s.share.priority), s.admission))
            .map(|(j, _)| j)
            .expect("the growing sequence runs")
    }

    /// Grows running sequence `i` by up to `n` positions within the free blocks and its
    /// tenant's KV cap; returns how many positions it may compute.
    fn grow_within_free(&mut self, i: usize, n: usize) -> usize {
        let bs = self.limits.block_size;
        let s = &self.running[i];
        let mut free = self.allocator.free_count();
        if let Some((blocks, cap)) = self.kv_cap_of(s) {
            free = free.min(cap.saturating_sub(blocks));
        }
        let table = &s.table;
        let room = table.capacity(bs) - table.len + free * bs;
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
    /// recompute its prompt and the tokens it generated so far. Tokens already planned for it in
    /// this step go back to the budget and its tenant's counter.
    fn preempt(&mut self, i: usize, draft: &mut Draft) {
        let mut sequence = self.running.remove(i);
        self.release(&mut sequence);
        sequence.preemptions += 1;
        let counters = &sequence.counters;
        counters.preemptions.fetch_add(1, Ordering::Relaxed);
        counters.running.fetch_sub(1, Ordering::Relaxed);
        counters.waiting.fetch_add(1, Ordering::Relaxed);
        if let Some(at) = draft.chunks.iter().position(|(id, _)| *id == sequence.id) {
            let (_, tokens) = draft.chunks.remove(at);
            draft.left += tokens;
            draft.class_left += tokens;
            self.fair_share
                .refund(sequence.tenant.as_str(), tokens, sequence.share.weight);
        }
        draft.plan.admitted.retain(|id| *id != sequence.id);
        draft.plan.preempted.push(sequence.id);
        self.waiting.push_front(sequence);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_api::SamplingParams;
    use engine_api::TokenEvent;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::Instant;
    use tokio::sync::mpsc::UnboundedReceiver;

    fn limits() -> SchedulerLimits {
        SchedulerLimits {
            max_batch_tokens: 8,
            max_running: 4,
            prefill_chunk: 4,
            block_size: 2,
            fair_share: true,
            lower_class_step_tokens: None,
            reserved_interactive_slots: 0,
        }
    }

    /// A sequence of `tenant` and its receiver (dropping it cancels the sequence).
    fn sequence_of(
        id: SequenceId,
        tenant: &str,
        share: Share,
        prompt: usize,
        max_tokens: usize,
    ) -> (Sequence, UnboundedReceiver<TokenEvent>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut s = Sequence::new(
            id,
            tenant.parse().unwrap(),
            vec![1; prompt],
            SamplingParams::greedy(max_tokens),
            tx,
            Instant::now(),
        );
        s.share = share;
        (s, rx)
    }

    fn sequence(id: SequenceId, prompt: usize) -> Sequence {
        let (s, rx) = sequence_of(id, "t", Share::default(), prompt, 8);
        std::mem::forget(rx); // keep the channel open: the sequence is not cancelled
        s
    }

    /// Queues `s` as the engine does: its tenant's waiting gauge counts it from submission.
    fn submit(scheduler: &mut Scheduler, s: Sequence) {
        s.counters.waiting.fetch_add(1, Ordering::Relaxed);
        scheduler.enqueue(s);
    }

    /// `(index, tokens, prefill)` of each chunk.
    fn shape(plan: &StepPlan) -> Vec<(usize, usize, bool)> {
        plan.chunks
            .iter()
            .map(|c| (c.index, c.tokens, c.prefill))
            .collect()
    }

    /// Applies a plan as the engine would after a forward pass (no sampling): full blocks
    /// join the prefix cache, and a sequence whose pending tokens are done gets token 7.
    fn compute(s: &mut Scheduler, plan: &StepPlan) {
        for c in &plan.chunks {
            s.running[c.index].table.len += c.tokens;
            s.register_computed(c.index);
            let seq = &mut s.running[c.index];
            if seq.pending() == 0 {
                seq.generated.push(7);
            }
        }
    }

    /// A stand-in for the KV pool: the token whose keys and values each (block, offset) holds.
    type FakeKv = HashMap<(models::BlockId, usize), u32>;

    /// What the forward pass of `plan` would write: each chunk's tokens at its positions.
    fn write_kv(s: &Scheduler, plan: &StepPlan, kv: &mut FakeKv) {
        let bs = s.limits.block_size;
        for c in &plan.chunks {
            let seq = &s.running[c.index];
            for (k, token) in seq.next_tokens(c.tokens).into_iter().enumerate() {
                let p = seq.computed() + k;
                kv.insert((seq.table.blocks[p / bs], p % bs), token);
            }
        }
    }

    /// Every computed position of every running sequence reads back its own token: a cache hit
    /// gave the right contents and no block in use was handed to another writer.
    fn check_contents(s: &Scheduler, kv: &FakeKv) {
        let bs = s.limits.block_size;
        for seq in &s.running {
            let tokens: Vec<u32> = seq
                .prompt_ids
                .iter()
                .chain(&seq.generated)
                .copied()
                .collect();
            for (p, token) in tokens.iter().enumerate().take(seq.computed()) {
                assert_eq!(
                    kv.get(&(seq.table.blocks[p / bs], p % bs)),
                    Some(token),
                    "sequence {} reads a wrong key/value at position {p}",
                    seq.id
                );
            }
        }
    }

    /// A sequence under the prefix-cache scope `scope` with prompt `prompt`.
    fn cached_sequence(id: SequenceId, scope: &str, prompt: Vec<u32>) -> Sequence {
        let mut s = sequence(id, prompt.len());
        s.prompt_ids = prompt;
        s.cache_root = Some(super::super::block_allocator::scope_root(["test", scope]));
        s
    }

    /// Runs `s` until idle; returns the plans.
    fn drain(s: &mut Scheduler) -> Vec<StepPlan> {
        let mut plans = Vec::new();
        while !s.is_idle() {
            let plan = s.plan();
            compute_and_finish(s, &plan);
            plans.push(plan);
        }
        plans
    }

    #[test]
    fn a_prompt_that_starts_like_a_cached_one_computes_only_the_rest() {
        let mut s = Scheduler::new(limits(), 64);
        let prompt: Vec<u32> = (10..19).collect();
        s.enqueue(cached_sequence(1, "tenant a", prompt.clone()));
        drain(&mut s);
        assert_eq!(s.allocator.free_count(), 64, "cached blocks count as free");
        // 9 prompt tokens and 8 generated, the last never computed: 8 full blocks of 2.
        assert_eq!(s.allocator.cached_count(), 8);
        // Same first 6 tokens, then different: three blocks found, the rest computed.
        let mut other = prompt[..6].to_vec();
        other.extend([40, 41, 42]);
        s.enqueue(cached_sequence(2, "tenant a", other));
        let plan = s.plan();
        assert_eq!(shape(&plan), vec![(0, 3, true)]);
        assert_eq!(s.running[0].cached_tokens, 6);
        assert_eq!((s.prefix_query_tokens, s.prefix_hit_tokens), (18, 6));
        drain(&mut s);
        // The whole prompt again: every full block but the one holding the last token.
        s.enqueue(cached_sequence(3, "tenant a", prompt.clone()));
        let plan = s.plan();
        assert_eq!(shape(&plan), vec![(0, 1, true)]);
        assert_eq!(s.running[0].cached_tokens, 8);
    }

    #[test]
    fn another_scope_never_finds_the_blocks() {
        let mut s = Scheduler::new(limits(), 64);
        let prompt: Vec<u32> = (10..19).collect();
        s.enqueue(cached_sequence(1, "tenant a", prompt.clone()));
        drain(&mut s);
        s.enqueue(cached_sequence(2, "tenant b", prompt.clone()));
        let plan = s.plan();
        assert_eq!(shape(&plan), vec![(0, 4, true)], "computed from the start");
        assert_eq!(s.running[0].cached_tokens, 0);
        // Blocks of the same tokens under two scopes: both kept, neither shared.
        drain(&mut s);
        assert_eq!(s.allocator.cached_count(), 16);
        // Off for a sequence (no scope): nothing found, nothing registered.
        let mut plain = sequence(3, 9);
        plain.prompt_ids = prompt;
        s.enqueue(plain);
        let plan = s.plan();
        assert_eq!(shape(&plan), vec![(0, 4, true)]);
        drain(&mut s);
        assert_eq!(s.allocator.cached_count(), 16);
    }

    #[test]
    fn a_preempted_sequence_finds_its_own_blocks_again() {
        // 6 blocks of 2: the first sequence's 8-token prompt holds 4, the second needs 3.
        let mut s = Scheduler::new(limits(), 6);
        let mut first = cached_sequence(1, "a", (10..18).collect());
        first.params.max_tokens = 2;
        s.enqueue(first);
        let plan = s.plan();
        compute(&mut s, &plan);
        let plan = s.plan();
        compute(&mut s, &plan);
        assert_eq!(s.running[0].computed(), 8);
        let mut second = cached_sequence(2, "a", (50..54).collect());
        second.params.max_tokens = 2;
        second.share.priority = Priority::Interactive;
        s.running[0].share.priority = Priority::Batch;
        s.enqueue(second);
        // The interactive newcomer needs its blocks: the batch sequence gives way.
        let mut preempted = false;
        for _ in 0..4 {
            let plan = s.plan();
            preempted |= plan.preempted.contains(&1);
            compute(&mut s, &plan);
            if preempted {
                break;
            }
        }
        assert!(preempted);
        let plans = drain(&mut s);
        let again = plans
            .iter()
            .flat_map(|p| &p.chunks)
            .filter(|c| c.sequence == 1)
            .map(|c| c.tokens)
            .next();
        // Its 9 tokens (the prompt and one generated) but the first three blocks, still
        // cached: its tail block went to the newcomer.
        assert_eq!(again, Some(3), "tokens computed again after the preemption");
    }

    /// Applies a plan and ends the sequences that reached `max_tokens`; returns their ids.
    fn compute_and_finish(s: &mut Scheduler, plan: &StepPlan) -> Vec<SequenceId> {
        compute(s, plan);
        let mut done: Vec<usize> = (0..s.running.len())
            .filter(|&i| s.running[i].generated.len() >= s.running[i].params.max_tokens)
            .collect();
        done.sort_unstable_by(|a, b| b.cmp(a));
        done.into_iter().map(|i| s.finish(i).id).collect()
    }

    fn running_of(s: &Scheduler, tenant: &str) -> usize {
        s.running
            .iter()
            .filter(|q| q.tenant.as_str() == tenant)
            .count()
    }

    #[test]
    fn choices_of_one_prompt_wait_for_it_and_share_its_full_blocks() {
        let mut s = Scheduler::new(limits(), 64);
        // A 7-token prompt over blocks of 2: three full blocks to share, the 7th token each
        // choice computes itself.
        s.enqueue(sequence(1, 7));
        for id in [2, 3] {
            let mut choice = sequence(id, 7);
            choice.fork_of = Some(1);
            s.enqueue(choice);
        }
        // While the first computes the prompt (chunks of 4), the others wait.
        let plan = s.plan();
        assert_eq!(plan.admitted, vec![1]);
        compute(&mut s, &plan);
        let plan = s.plan();
        assert_eq!(plan.admitted, Vec::<SequenceId>::new());
        compute(&mut s, &plan);
        // The prompt is done: both others are admitted, each computing one token.
        let plan = s.plan();
        assert_eq!(plan.admitted, vec![2, 3]);
        assert_eq!(shape(&plan)[1..], [(1, 1, true), (2, 1, true)]);
        let parent = s.running[0].table.blocks.clone();
        for child in &s.running[1..] {
            assert_eq!(child.table.blocks[..3], parent[..3]);
            assert_ne!(
                child.table.blocks[3], parent[3],
                "the partial block is each one's own"
            );
        }
        assert_eq!(s.allocator.holders(parent[0]), 3);
        // Four blocks for the first, one more for each other: 6 held, not 12.
        let held: std::collections::HashSet<_> = s
            .running
            .iter()
            .flat_map(|q| q.table.blocks.clone())
            .collect();
        assert_eq!(held.len(), 6);
        assert_eq!(s.allocator.free_count(), 64 - 6);
        compute(&mut s, &plan);
        // Ending them in any order returns every block once.
        for i in [0, 0, 0] {
            s.finish(i);
        }
        assert_eq!(s.allocator.free_count(), 64);
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

    /// Tenant `noisy` fills every slot and keeps a backlog; returns the scheduler after a few
    /// steps, and the receivers that keep its sequences alive.
    fn flooded(
        limits: SchedulerLimits,
        share: Share,
    ) -> (Scheduler, Vec<UnboundedReceiver<TokenEvent>>) {
        let mut s = Scheduler::new(limits, 256);
        let mut keep = Vec::new();
        for id in 0..12 {
            let (q, rx) = sequence_of(id, "noisy", share, 3, 40);
            keep.push(rx);
            submit(&mut s, q);
        }
        for _ in 0..4 {
            let plan = s.plan();
            compute(&mut s, &plan);
        }
        assert_eq!(running_of(&s, "noisy"), 4, "the neighbour fills the batch");
        (s, keep)
    }

    /// [`flooded`] by a `batch`-class tenant, with one batch token per step beside interactive
    /// work.
    fn flooded_by_batch() -> (Scheduler, Vec<UnboundedReceiver<TokenEvent>>) {
        let batch = Share {
            priority: Priority::Batch,
            ..Share::default()
        };
        let limits = SchedulerLimits {
            lower_class_step_tokens: Some(1),
            ..limits()
        };
        flooded(limits, batch)
    }

    #[test]
    fn a_quiet_arrival_gets_a_slot_in_the_next_step_and_slots_do_not_flap() {
        let (mut s, _keep) = flooded(limits(), Share::default());
        let (quiet, _rx) = sequence_of(100, "quiet", Share::default(), 3, 40);
        submit(&mut s, quiet);
        let plan = s.plan();
        assert!(
            plan.admitted.contains(&100),
            "admitted at the first step after arriving"
        );
        assert_eq!(
            plan.preempted.len(),
            1,
            "one neighbour's sequence made room"
        );
        let victim = plan.preempted[0];
        assert!(
            s.running
                .iter()
                .filter(|q| q.tenant.as_str() == "noisy")
                .all(|q| q.admission < s.running.iter().find(|q| q.id == 100).unwrap().admission),
            "the victim was the neighbour's youngest"
        );
        assert!(plan.chunks.iter().any(|c| c.sequence == 100 && c.prefill));
        compute(&mut s, &plan);
        // The victim waits at the front of the queue and the slots settle: no preemption back
        // and forth while both tenants are busy.
        assert_eq!(s.waiting.front().map(|q| q.id), Some(victim));
        for _ in 0..30 {
            let plan = s.plan();
            assert!(
                plan.preempted.is_empty(),
                "slots flapped: {:?}",
                plan.preempted
            );
            compute(&mut s, &plan);
        }
        assert_eq!(running_of(&s, "quiet"), 1);
    }

    #[test]
    fn preemption_for_fairness_needs_the_other_tenant_to_hold_more_slots() {
        // Two tenants with two slots each: a third arrival of either takes nothing.
        let mut s = Scheduler::new(limits(), 256);
        let mut keep = Vec::new();
        for id in 0..8 {
            let tenant = if id % 2 == 0 { "a" } else { "b" };
            let (q, rx) = sequence_of(id, tenant, Share::default(), 3, 40);
            keep.push(rx);
            submit(&mut s, q);
        }
        for _ in 0..20 {
            let plan = s.plan();
            assert!(plan.preempted.is_empty());
            compute(&mut s, &plan);
        }
        assert_eq!((running_of(&s, "a"), running_of(&s, "b")), (2, 2));
    }

    #[test]
    fn weights_set_the_slot_split_that_preemption_restores() {
        // `heavy` (weight 3) holds every slot; `light` (weight 1) arrives with a backlog: one
        // slot changes hands, as 3:1 asks, and no more.
        let heavy = Share {
            weight: 3.0,
            ..Share::default()
        };
        let (mut s, _keep) = flooded(limits(), heavy);
        let mut keep = Vec::new();
        for id in 100..104 {
            let (q, rx) = sequence_of(id, "light", Share::default(), 3, 40);
            keep.push(rx);
            submit(&mut s, q);
        }
        let mut preempted = 0;
        for _ in 0..10 {
            let plan = s.plan();
            preempted += plan.preempted.len();
            compute(&mut s, &plan);
        }
        assert_eq!(preempted, 1);
        assert_eq!((running_of(&s, "noisy"), running_of(&s, "light")), (3, 1));
    }

    #[test]
    fn a_higher_class_is_admitted_first_and_keeps_its_steps_short() {
        let (mut s, _keep) = flooded_by_batch();
        // The batch tenant is far less served than the newcomer will be, yet the interactive
        // request goes first: classes before fair share.
        let (urgent, _rx) = sequence_of(100, "clinic", Share::default(), 3, 6);
        submit(&mut s, urgent);
        let plan = s.plan();
        assert!(plan.admitted.contains(&100));
        assert_eq!(plan.preempted.len(), 1, "a batch sequence gave its slot");
        let mut steps_with_urgent = 0;
        let mut done = false;
        while !done {
            let plan = s.plan();
            let urgent_runs = plan.chunks.iter().any(|c| c.sequence == 100);
            let batch_tokens: usize = plan
                .chunks
                .iter()
                .filter(|c| c.tenant.as_str() == "noisy")
                .map(|c| c.tokens)
                .sum();
            if urgent_runs {
                steps_with_urgent += 1;
                assert!(
                    batch_tokens <= 1,
                    "batch took {batch_tokens} tokens beside interactive"
                );
            }
            done = compute_and_finish(&mut s, &plan).contains(&100);
        }
        assert!(steps_with_urgent >= 5);
        // With the interactive work gone, batch fills the step again.
        let plan = s.plan();
        assert!(plan.chunks.iter().map(|c| c.tokens).sum::<usize>() > 1);
        // And a batch sequence never preempts an interactive one.
        let (late, _rx2) = sequence_of(101, "clinic", Share::default(), 3, 40);
        submit(&mut s, late);
        let plan = s.plan();
        compute(&mut s, &plan);
        for _ in 0..20 {
            let plan = s.plan();
            assert!(!plan.preempted.contains(&101));
            compute(&mut s, &plan);
        }
    }

    #[test]
    fn an_urgent_step_admits_only_a_higher_class_that_fits_and_leaves_the_batch_alone() {
        // Batch work holds 3 of 4 slots; its step is in flight.
        let batch = Share {
            priority: Priority::Batch,
            ..Share::default()
        };
        let mut s = Scheduler::new(limits(), 256);
        let mut keep = Vec::new();
        for id in 0..3 {
            let (q, rx) = sequence_of(id, "bulk", batch, 3, 40);
            keep.push(rx);
            submit(&mut s, q);
        }
        let (late_batch, rx) = sequence_of(50, "bulk", batch, 3, 40);
        keep.push(rx);
        let in_flight = s.plan();
        compute(&mut s, &in_flight);
        let in_flight = s.plan();
        let paused_len = s.running.len();
        let before: Vec<(SequenceId, usize, usize)> = s
            .running
            .iter()
            .map(|q| (q.id, q.table.len, q.table.blocks.len()))
            .collect();
        // Nothing above batch waits: no urgent step, even with a batch arrival.
        submit(&mut s, late_batch);
        assert!(!s.waits_above(Priority::Batch));
        assert!(s.plan_urgent(Priority::Batch, paused_len).chunks.is_empty());
        // Two interactive arrivals: one fits in the free slot and runs its whole prompt now;
        // the other would need a preemption and waits for the next ordinary step.
        let (a, _ra) = sequence_of(100, "clinic", Share::default(), 3, 6);
        let (b, _rb) = sequence_of(101, "lab", Share::default(), 3, 6);
        submit(&mut s, a);
        submit(&mut s, b);
        assert!(s.waits_above(Priority::Batch));
        assert!(
            s.plan_urgent(Priority::Interactive, paused_len)
                .chunks
                .is_empty(),
            "nothing cuts into an interactive step"
        );
        let urgent = s.plan_urgent(Priority::Batch, paused_len);
        assert_eq!(urgent.admitted.len(), 1);
        assert!(urgent.preempted.is_empty());
        assert_eq!(shape(&urgent), vec![(3, 3, true)]);
        // The paused step's sequences, indices and blocks are as they were.
        for (i, (id, len, blocks)) in before.iter().enumerate() {
            let q = &s.running[i];
            assert_eq!(
                (q.id, q.table.len, q.table.blocks.len()),
                (*id, *len, *blocks)
            );
        }
        assert!(in_flight
            .chunks
            .iter()
            .all(|c| s.running[c.index].id == c.sequence));
        // While the step stays paused, the newcomer keeps decoding; no one else gets in.
        compute(&mut s, &urgent);
        let next_token = s.plan_urgent(Priority::Batch, paused_len);
        assert_eq!(
            shape(&next_token),
            vec![(3, 1, false)],
            "no slot left for the other"
        );
        compute(&mut s, &next_token);
        // The ordinary step after it gives the other interactive request a batch slot.
        compute(&mut s, &in_flight);
        let next = s.plan();
        assert_eq!(next.admitted.len(), 1);
        assert_eq!(next.preempted.len(), 1);
    }

    #[test]
    fn batch_work_leaves_the_reserved_slot_to_an_interactive_arrival() {
        let limits = SchedulerLimits {
            reserved_interactive_slots: 1,
            ..limits()
        };
        let batch = Share {
            priority: Priority::Batch,
            ..Share::default()
        };
        let mut s = Scheduler::new(limits, 256);
        let mut keep = Vec::new();
        for id in 0..12 {
            let (q, rx) = sequence_of(id, "bulk", batch, 3, 40);
            keep.push(rx);
            submit(&mut s, q);
        }
        for _ in 0..6 {
            let plan = s.plan();
            compute(&mut s, &plan);
        }
        assert_eq!(
            running_of(&s, "bulk"),
            3,
            "batch keeps off the reserved slot"
        );
        let (clinic, _rx) = sequence_of(100, "clinic", Share::default(), 3, 6);
        submit(&mut s, clinic);
        let paused_len = s.running.len();
        let urgent = s.plan_urgent(Priority::Batch, paused_len);
        assert_eq!(urgent.admitted, vec![100]);
        assert!(urgent.preempted.is_empty());
    }

    #[test]
    fn batch_decodes_take_turns_when_their_step_share_is_small() {
        let (mut s, _keep) = flooded_by_batch();
        let (urgent, _rx) = sequence_of(100, "clinic", Share::default(), 3, 40);
        submit(&mut s, urgent);
        let mut served: HashMap<SequenceId, usize> = HashMap::new();
        for _ in 0..12 {
            let plan = s.plan();
            for c in plan.chunks.iter().filter(|c| c.tenant.as_str() == "noisy") {
                *served.entry(c.sequence).or_default() += 1;
            }
            compute(&mut s, &plan);
        }
        let running_batch: Vec<SequenceId> = s
            .running
            .iter()
            .filter(|q| q.tenant.as_str() == "noisy")
            .map(|q| q.id)
            .collect();
        assert_eq!(running_batch.len(), 3);
        for id in running_batch {
            assert!(
                served.get(&id).copied().unwrap_or(0) >= 3,
                "{id} starved: {served:?}"
            );
        }
    }

    #[test]
    fn caps_bound_what_one_tenant_holds() {
        let capped = Share {
            max_running_share: Some(0.5),
            max_kv_share: Some(0.25),
            ..Share::default()
        };
        let mut s = Scheduler::new(limits(), 32); // KV cap: 8 blocks
        let mut keep = Vec::new();
        for id in 0..6 {
            let (q, rx) = sequence_of(id, "capped", capped, 3, 12);
            keep.push(rx);
            submit(&mut s, q);
        }
        let mut preempted = 0;
        for _ in 0..40 {
            let plan = s.plan();
            preempted += plan.preempted.len();
            let (n, blocks) = s.held_by(&"capped".parse().unwrap());
            assert!(n <= 2, "{n} running, cap 2");
            assert!(n < 2 || blocks <= 8, "{blocks} blocks, cap 8");
            compute_and_finish(&mut s, &plan);
        }
        assert!(
            preempted > 0,
            "growth past the KV cap preempted the tenant's own youngest"
        );
        // A tenant alone at its cap still leaves the rest for others.
        let (other, _rx) = sequence_of(100, "other", Share::default(), 3, 4);
        submit(&mut s, other);
        let plan = s.plan();
        assert!(plan.admitted.contains(&100) || running_of(&s, "other") == 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Submit: (tenant 0-2, batch class, prompt length, max tokens, prompt variant).
        Submit(usize, bool, usize, usize, u32),
        /// Drop the receiver of the `i % live`-th sequence (its client leaves).
        Cancel(usize),
        /// Plan and compute this many steps.
        Steps(usize),
        /// Plan a step, and before computing it run an urgent step (as while it is paused).
        Paused,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..3, any::<bool>(), 1usize..12, 1usize..10, 0u32..3)
                .prop_map(|(t, b, p, m, v)| Op::Submit(t, b, p, m, v)),
            any::<usize>().prop_map(Op::Cancel),
            (1usize..4).prop_map(Op::Steps),
            Just(Op::Paused),
        ]
    }

    /// Every block is free or held by exactly one running sequence; no sequence is both
    /// running and waiting; the tenants' gauges match the queues.
    fn check_invariants(s: &Scheduler, total: usize, tenants: &[Arc<engine_api::TenantCounters>]) {
        // Blocks are shared (prefix cache): each one's holders are the sequences holding it.
        let mut holders: HashMap<models::BlockId, u32> = HashMap::new();
        for b in s.running.iter().flat_map(|q| q.table.blocks.iter()) {
            *holders.entry(*b).or_default() += 1;
        }
        for (b, n) in &holders {
            assert_eq!(s.allocator.holders(*b), *n, "holders of block {b}");
        }
        assert_eq!(
            holders.len() + s.allocator.free_count(),
            total,
            "a block leaked"
        );
        assert!(s.running.len() <= s.limits.max_running);
        assert!(
            s.waiting.iter().all(|q| q.table.blocks.is_empty()),
            "a waiting sequence holds blocks"
        );
        let ids: HashSet<_> = s.running.iter().chain(&s.waiting).map(|q| q.id).collect();
        assert_eq!(
            ids.len(),
            s.running.len() + s.waiting.len(),
            "a sequence is in two places"
        );
        for (t, counters) in tenants.iter().enumerate() {
            let name = format!("t{t}");
            let waiting = s
                .waiting
                .iter()
                .filter(|q| q.tenant.as_str() == name)
                .count();
            assert_eq!(
                counters.waiting.load(Ordering::Relaxed) as usize,
                waiting,
                "{name} waiting"
            );
            assert_eq!(
                counters.running.load(Ordering::Relaxed) as usize,
                running_of(s, &name),
                "{name} running"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)))]
        #[test]
        fn no_slot_or_block_leaks_across_preemption_and_cancellation(
            blocks in 4usize..24,
            ops in proptest::collection::vec(op(), 1..60),
        ) {
            let mut s = Scheduler::new(
                SchedulerLimits {
                    lower_class_step_tokens: Some(1),
                    reserved_interactive_slots: 1,
                    ..limits()
                },
                blocks,
            );
            let tenants: Vec<Arc<engine_api::TenantCounters>> =
                (0..3).map(|_| Arc::default()).collect();
            let mut receivers: Vec<(SequenceId, UnboundedReceiver<TokenEvent>)> = Vec::new();
            let mut next_id = 0;
            let mut kv = FakeKv::new();
            for op in ops {
                match op {
                    Op::Submit(t, batch, prompt, max_tokens, variant) => {
                        // Never more than the pool can hold, as the engine checks at submission.
                        if blocks_for(prompt + max_tokens, 2) > blocks { continue; }
                        let share = Share {
                            priority: if batch { Priority::Batch } else { Priority::Interactive },
                            max_running_share: (t == 2).then_some(0.5),
                            max_kv_share: (t == 2).then_some(0.5),
                            weight: 1.0 + t as f64,
                            ..Share::default()
                        };
                        let (mut q, rx) = sequence_of(next_id, &format!("t{t}"), share, prompt, max_tokens);
                        q.counters = tenants[t].clone();
                        // Prompts start alike and differ after half; t0 and t1 share a
                        // prefix-cache scope, t2 has its own.
                        q.prompt_ids = (0..prompt as u32).map(|i| if 2 * i < prompt as u32 { 1 } else { 2 + variant }).collect();
                        let scope = if t == 2 { "t2" } else { "group" };
                        q.cache_root = Some(super::super::block_allocator::scope_root(["test", scope]));
                        receivers.push((next_id, rx));
                        next_id += 1;
                        submit(&mut s, q);
                    }
                    Op::Cancel(i) if !receivers.is_empty() => {
                        let i = i % receivers.len();
                        drop(receivers.swap_remove(i));
                        s.remove_cancelled();
                    }
                    Op::Cancel(_) => {}
                    Op::Paused => {
                        s.remove_cancelled();
                        let plan = s.plan();
                        let in_flight: Vec<(SequenceId, Vec<u32>)> = plan
                            .chunks
                            .iter()
                            .map(|c| (s.running[c.index].id, s.running[c.index].table.blocks.clone()))
                            .collect();
                        let top = plan.chunks.iter().map(|c| s.running[c.index].share.priority).max();
                        if let Some(top) = top {
                            // Two pauses in the step: admissions, then their next tokens.
                            let paused_len = s.running.len();
                            for _ in 0..2 {
                                let urgent = s.plan_urgent(top, paused_len);
                                prop_assert!(urgent.preempted.is_empty());
                                write_kv(&s, &urgent, &mut kv);
                                compute_and_finish(&mut s, &urgent);
                            }
                        }
                        // The paused step's sequences, at its indices, with the same blocks.
                        for (c, (id, blocks)) in plan.chunks.iter().zip(&in_flight) {
                            prop_assert_eq!(s.running[c.index].id, *id);
                            prop_assert_eq!(&s.running[c.index].table.blocks, blocks);
                        }
                        write_kv(&s, &plan, &mut kv);
                        compute_and_finish(&mut s, &plan);
                        check_invariants(&s, blocks, &tenants);
                        check_contents(&s, &kv);
                    }
                    Op::Steps(n) => {
                        for _ in 0..n {
                            s.remove_cancelled();
                            let plan = s.plan();
                            check_contents(&s, &kv);
                            write_kv(&s, &plan, &mut kv);
                            compute_and_finish(&mut s, &plan);
                            check_invariants(&s, blocks, &tenants);
                            check_contents(&s, &kv);
                        }
                    }
                }
                check_invariants(&s, blocks, &tenants);
            }
            // Drain: everything submitted ends, and every block comes back.
            let mut steps = 0;
            while !s.is_idle() {
                s.remove_cancelled();
                let plan = s.plan();
                check_contents(&s, &kv);
                write_kv(&s, &plan, &mut kv);
                compute_and_finish(&mut s, &plan);
                check_invariants(&s, blocks, &tenants);
                check_contents(&s, &kv);
                steps += 1;
                prop_assert!(steps < 5000, "the queue never drained: {} waiting", s.waiting.len());
            }
            prop_assert_eq!(s.allocator.free_count(), blocks);
        }
    }
}

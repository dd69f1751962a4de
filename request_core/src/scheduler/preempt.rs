//! Making room: who gives way for a newcomer or for a growing sequence (lower classes first,
//! youngest first, a tenant's own youngest past its KV cap), and preemption itself (blocks
//! freed, the sequence back at the front of the queue to be recomputed).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use policies::TenantId;

use super::{Draft, Scheduler};
use crate::block_pool::{blocks_for, BlockTable};
use crate::sequence::{Sequence, SequenceId};

impl<D> Scheduler<D> {
    /// The running sequences to preempt so that `newcomer` fits (empty: it fits already), or
    /// `None` if the rules allow no room for it. Lower classes give way first, youngest first;
    /// inside the class, a tenant gives a slot only while it keeps at least as many for its
    /// weight as the newcomer's tenant will have, and only if it is not less served.
    pub(super) fn victims_for(&self, newcomer: &Sequence<D>) -> Option<Vec<SequenceId>> {
        let class = newcomer.share.priority;
        let prompt_blocks = blocks_for(newcomer.total_tokens(), self.limits.block_size);
        let mut free = self.allocator.free_count();
        let mut running = self.running.len();
        let owed_to = |s: &Sequence<D>| {
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

    /// Ensures running sequence `i` has blocks for `n` more positions, preempting as needed:
    /// the tenant's own youngest if it would pass its KV cap, else the youngest of the lowest
    /// class. Returns false if `i` itself had to be preempted.
    pub(super) fn grow_or_preempt(&mut self, i: usize, n: usize, draft: &mut Draft) -> bool {
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
    pub(super) fn victim_to_grow(&self, i: usize, needed: usize) -> Option<usize> {
        self.over_kv_cap(i, needed)
            .or_else(|| (self.allocator.free_count() < needed).then(|| self.growth_victim()))
    }

    /// If growing sequence `i` by `needed` blocks takes its tenant past its KV cap while it runs
    /// other sequences too, the tenant's youngest (perhaps `i` itself).
    pub(super) fn over_kv_cap(&self, i: usize, needed: usize) -> Option<usize> {
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
    pub(super) fn growth_victim(&self) -> usize {
        self.running
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| (std::cmp::Reverse(s.share.priority), s.admission))
            .map(|(j, _)| j)
            .expect("the growing sequence runs")
    }

    /// Grows running sequence `i` by up to `n` positions within the free blocks and its
    /// tenant's KV cap; returns how many positions it may compute.
    pub(super) fn grow_within_free(&mut self, i: usize, n: usize) -> usize {
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

    pub(super) fn blocks_missing(&self, i: usize, n: usize) -> usize {
        let table: &BlockTable = &self.running[i].table;
        blocks_for(table.len + n, self.limits.block_size).saturating_sub(table.blocks.len())
    }

    /// Frees running sequence `i`'s blocks and puts it back at the front of the queue; it will
    /// recompute its prompt and the tokens it generated so far. Tokens already planned for it in
    /// this step go back to the budget and its tenant's counter.
    pub(super) fn preempt(&mut self, i: usize, draft: &mut Draft) {
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
            let (group, weight) = sequence.share_group();
            self.group_share.refund(group, tokens, weight);
        }
        draft.plan.admitted.retain(|id| *id != sequence.id);
        draft.plan.preempted.push(sequence.id);
        self.waiting.push_front(sequence);
    }
}

//! What a tenant holds and may hold: its running slots and KV blocks against its caps, and
//! the slots a class may fill.

use policies::{Priority, Share, TenantId};

use super::Scheduler;
use crate::block_pool::blocks_for;
use crate::sequence::Sequence;

impl<D> Scheduler<D> {
    /// Sequences and blocks `tenant` holds in the batch.
    pub(super) fn held_by(&self, tenant: &TenantId) -> (usize, usize) {
        self.running
            .iter()
            .filter(|s| &s.tenant == tenant)
            .fold((0, 0), |(n, b), s| (n + 1, b + s.table.blocks.len()))
    }

    /// Blocks `tenant`'s running sequences hold or will need for the rest of their prompts.
    pub(super) fn committed_to(&self, tenant: &TenantId) -> usize {
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
    pub(super) fn at_cap(&self, s: &Sequence<D>) -> bool {
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

    /// Slots sequences of `class` may fill: all of them for the highest class, the rest less
    /// the reserve (always at least one).
    pub(super) fn max_running_of(&self, class: Priority) -> usize {
        if class == Priority::HIGHEST_FIRST[0] {
            self.limits.max_running
        } else {
            self.limits
                .max_running
                .saturating_sub(self.limits.reserved_interactive_slots)
                .max(1)
        }
    }

    /// The blocks `s`'s tenant holds and its KV cap, when the cap binds: it has one and the
    /// tenant runs other sequences too (one sequence may always run).
    pub(super) fn kv_cap_of(&self, s: &Sequence<D>) -> Option<(usize, usize)> {
        s.share.max_kv_share?;
        let (running, blocks) = self.held_by(&s.tenant);
        let cap = Share::cap(s.share.max_kv_share, self.allocator.total());
        (running > 1).then_some((blocks, cap))
    }
}

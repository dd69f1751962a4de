//! Fixed-size KV blocks handed out from a pool allocated once per engine.
//!
//! A block may be held by several sequences at once: the choices of one prompt (`n` > 1) share
//! the prompt's full blocks ([`BlockAllocator::share`]). A full block is never written again
//! (a sequence writes only past its own length), so sharing needs no copy; a block returns to
//! the free list when its last holder releases it.

pub use crate::model::BlockId;

/// A free list of block ids and each block's holders. Allocation is all-or-nothing, so a
/// failed request never leaves a sequence half-grown.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    free: Vec<BlockId>,
    /// Sequences holding each block (0: free).
    holders: Vec<u32>,
    total: usize,
}

impl BlockAllocator {
    /// An allocator over `total` blocks, all free.
    pub fn new(total: usize) -> Self {
        // Reversed so that blocks are handed out from 0 upwards.
        Self {
            free: (0..total as BlockId).rev().collect(),
            holders: vec![0; total],
            total,
        }
    }

    /// Blocks in the pool, free or not.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Blocks free now.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// `n` blocks, or `None` (and nothing taken) if fewer are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.free.len() {
            return None;
        }
        let at = self.free.len() - n;
        let blocks = self.free.split_off(at);
        for &block in &blocks {
            self.holders[block as usize] = 1;
        }
        Some(blocks)
    }

    /// Another sequence holds `blocks` too (they must be held already).
    pub fn share(&mut self, blocks: &[BlockId]) {
        for &block in blocks {
            let holders = &mut self.holders[block as usize];
            debug_assert!(*holders > 0, "block {block} is free: nothing to share");
            *holders += 1;
        }
    }

    /// Sequences holding `block`.
    pub fn holders(&self, block: BlockId) -> u32 {
        self.holders.get(block as usize).copied().unwrap_or(0)
    }

    /// A holder lets `blocks` go; each returns to the pool with its last holder.
    pub fn release(&mut self, blocks: impl IntoIterator<Item = BlockId>) {
        for block in blocks {
            debug_assert!(
                (block as usize) < self.total,
                "block {block} is not from this pool"
            );
            let holders = &mut self.holders[block as usize];
            debug_assert!(*holders > 0, "block {block} released twice");
            *holders = holders.saturating_sub(1);
            if *holders == 0 {
                self.free.push(block);
            }
        }
    }
}

/// Blocks needed to hold `tokens` positions.
pub fn blocks_for(tokens: usize, block_size: usize) -> usize {
    tokens.div_ceil(block_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[derive(Debug, Clone)]
    enum Op {
        /// Start a sequence with this many blocks.
        Allocate(usize),
        /// Grow sequence `i % live` by this many blocks.
        Grow(usize, usize),
        /// Free sequence `i % live`.
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..6).prop_map(Op::Allocate),
            (any::<usize>(), 1usize..4).prop_map(|(i, n)| Op::Grow(i, n)),
            any::<usize>().prop_map(Op::Free),
        ]
    }

    proptest! {
        #[test]
        fn never_double_allocates_or_leaks(total in 1usize..64, ops in proptest::collection::vec(op(), 0..200)) {
            let mut pool = BlockAllocator::new(total);
            let mut sequences: Vec<Vec<BlockId>> = Vec::new();
            for op in ops {
                match op {
                    Op::Allocate(n) => {
                        let before = pool.free_count();
                        match pool.allocate(n) {
                            Some(blocks) => { prop_assert_eq!(blocks.len(), n); sequences.push(blocks); }
                            None => prop_assert_eq!(pool.free_count(), before),
                        }
                    }
                    Op::Grow(i, n) if !sequences.is_empty() => {
                        let i = i % sequences.len();
                        if let Some(more) = pool.allocate(n) { sequences[i].extend(more); }
                    }
                    Op::Free(i) if !sequences.is_empty() => {
                        let blocks = sequences.swap_remove(i % sequences.len());
                        pool.release(blocks);
                    }
                    _ => {}
                }
                // Invariant: every block is either free or held by exactly one sequence.
                let held: Vec<BlockId> = sequences.iter().flatten().copied().collect();
                let unique: HashSet<BlockId> = held.iter().copied().collect();
                prop_assert_eq!(unique.len(), held.len(), "a block is held twice");
                prop_assert_eq!(held.len() + pool.free_count(), total, "a block leaked");
                prop_assert!(held.iter().all(|b| (*b as usize) < total));
                prop_assert!(held.iter().all(|b| !pool.free.contains(b)), "a held block is also free");
            }
            for blocks in sequences.drain(..) { pool.release(blocks); }
            prop_assert_eq!(pool.free_count(), total);
        }
    }

    #[test]
    fn a_shared_block_is_free_only_when_its_last_holder_lets_go() {
        let mut pool = BlockAllocator::new(4);
        let parent = pool.allocate(3).unwrap();
        pool.share(&parent[..2]);
        pool.share(&parent[..2]);
        assert_eq!(pool.holders(parent[0]), 3);
        assert_eq!(pool.free_count(), 1);
        pool.release(parent.clone());
        assert_eq!(pool.free_count(), 2, "only the unshared block came back");
        pool.release(parent[..2].to_vec());
        assert_eq!(pool.free_count(), 2);
        pool.release(parent[..2].to_vec());
        assert_eq!(pool.free_count(), 4);
        assert_eq!(pool.holders(parent[0]), 0);
    }

    #[test]
    fn all_or_nothing() {
        let mut pool = BlockAllocator::new(3);
        assert!(pool.allocate(4).is_none());
        assert_eq!(pool.free_count(), 3);
        let a = pool.allocate(2).unwrap();
        assert_eq!(a.len(), 2);
        assert!(pool.allocate(2).is_none());
        pool.release(a);
        assert_eq!(pool.free_count(), 3);
        assert_eq!(blocks_for(0, 16), 0);
        assert_eq!(blocks_for(16, 16), 1);
        assert_eq!(blocks_for(17, 16), 2);
    }
}

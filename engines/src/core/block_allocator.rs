//! Fixed-size KV blocks handed out from a pool allocated once per engine.

pub use crate::model::BlockId;

/// A free list of block ids. Allocation is all-or-nothing, so a failed request never leaves
/// a sequence half-grown.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    free: Vec<BlockId>,
    total: usize,
}

impl BlockAllocator {
    /// An allocator over `total` blocks, all free.
    pub fn new(total: usize) -> Self {
        // Reversed so that blocks are handed out from 0 upwards.
        Self {
            free: (0..total as BlockId).rev().collect(),
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
        Some(self.free.split_off(at))
    }

    /// Returns blocks to the pool.
    pub fn release(&mut self, blocks: impl IntoIterator<Item = BlockId>) {
        for block in blocks {
            debug_assert!(
                (block as usize) < self.total,
                "block {block} is not from this pool"
            );
            debug_assert!(!self.free.contains(&block), "block {block} released twice");
            self.free.push(block);
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

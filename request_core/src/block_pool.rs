//! Fixed-size KV blocks handed out from a pool allocated once per engine, and the prefix cache
//! over them.
//!
//! A block may be held by several sequences at once: the choices of one prompt (`n` > 1) and
//! sequences whose prompts start alike share full blocks. A full block is never written again
//! (a sequence writes only past its own length), so sharing needs no copy.
//!
//! Prefix cache: a full block may be registered under a [`BlockHash`], a key chained over its
//! tokens, its predecessor's key and, at the root, a scope (the tenant, or a sharing group), so
//! the same tokens under another scope never find it. A registered block whose last holder lets
//! it go keeps its contents and its key: it is *cached*, reusable by the next sequence whose
//! prefix has the same key. Cached blocks still count as free: an allocation takes empty blocks
//! first, then evicts cached ones, least recently released first, so caching never reduces what
//! running sequences can have.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

/// Index of one KV block in a pool.
pub type BlockId = u32;

/// The blocks of one sequence and how many positions they hold. The runner hands the model its
/// own copy for a step; the core advances `len` when the step is done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    /// Its blocks, in position order: position `p` is in `blocks[p / block_size]`.
    pub blocks: Vec<BlockId>,
    /// Positions computed so far.
    pub len: usize,
}

impl BlockTable {
    /// Positions the table can hold without another block.
    pub fn capacity(&self, block_size: usize) -> usize {
        self.blocks.len() * block_size
    }
}

/// The key of a full block's contents: a hash chained over every token up to its end and the
/// cache scope (see [`chain_hash`]).
pub type BlockHash = u128;

/// The key of a block whose predecessor's key is `previous` (the scope's root for the first
/// block) and whose tokens are `tokens`. SHA-256, truncated to 128 bits: a collision would
/// hand one prompt another's keys and values, so the hash must resist crafted inputs, not only
/// chance.
pub fn chain_hash(previous: BlockHash, tokens: impl IntoIterator<Item = u32>) -> BlockHash {
    let mut hasher = Sha256::new();
    hasher.update(previous.to_le_bytes());
    for token in tokens {
        hasher.update(token.to_le_bytes());
    }
    key_of_digest(hasher)
}

/// The root key of a cache scope, named by its kind and name
/// ([`engine_api::prefix_cache_scope`]): the chain of every block under it starts here.
pub fn scope_root([kind, name]: [&str; 2]) -> BlockHash {
    key_of_digest(
        Sha256::new()
            .chain_update(b"prefix-cache scope\0")
            .chain_update(kind.as_bytes())
            .chain_update(b"\0")
            .chain_update(name.as_bytes()),
    )
}

/// The root key of the prefix-cache scope `[kind, name]` seen through LoRA adapter `adapter`:
/// the adapter's keys and values differ from the base model's, so its blocks are its own.
/// Every part is length-prefixed, so no scope name can spell another scope with an adapter.
pub fn adapter_scope_root([kind, name]: [&str; 2], adapter: &str) -> BlockHash {
    let mut hasher = Sha256::new().chain_update(b"prefix-cache scope with adapter\0");
    for part in [kind, name, adapter] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    key_of_digest(hasher)
}

/// The first 128 bits of the hash `hasher` has taken in.
fn key_of_digest(hasher: Sha256) -> BlockHash {
    let digest = hasher.finalize();
    BlockHash::from_le_bytes(digest[..16].try_into().expect("16 of 32 bytes"))
}

/// A pool of KV blocks: empty ones, cached ones (contents kept, nobody holds them) and held
/// ones with their holder counts. Allocation is all-or-nothing, so a failed request never
/// leaves a sequence half-grown.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    /// Blocks with no contents worth keeping.
    empty: Vec<BlockId>,
    /// Sequences holding each block (0: empty or cached).
    holders: Vec<u32>,
    /// Each block's key while it is registered.
    key_of: Vec<Option<BlockHash>>,
    /// Registered blocks by key.
    by_key: HashMap<BlockHash, BlockId>,
    /// Cached blocks (registered, no holder) by the tick of their release: the first is
    /// evicted first.
    evictable: BTreeMap<u64, BlockId>,
    /// The tick at which each cached block was released (its key in `evictable`).
    released_at: Vec<u64>,
    tick: u64,
    total: usize,
}

impl BlockAllocator {
    /// An allocator over `total` blocks, all empty.
    pub fn new(total: usize) -> Self {
        // Reversed so that blocks are handed out from 0 upwards.
        Self {
            empty: (0..total as BlockId).rev().collect(),
            holders: vec![0; total],
            key_of: vec![None; total],
            by_key: HashMap::new(),
            evictable: BTreeMap::new(),
            released_at: vec![0; total],
            tick: 0,
            total,
        }
    }

    /// Blocks in the pool, free or not.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Blocks an allocation may take now: empty ones and cached ones nobody holds.
    pub fn free_count(&self) -> usize {
        self.empty.len() + self.evictable.len()
    }

    /// Blocks registered in the prefix cache, held or not.
    pub fn cached_count(&self) -> usize {
        self.by_key.len()
    }

    /// `n` blocks, or `None` (and nothing taken) if fewer are free. Empty blocks go first,
    /// then the least recently released cached ones, which leave the cache.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.free_count() {
            return None;
        }
        let from_empty = n.min(self.empty.len());
        let at = self.empty.len() - from_empty;
        let mut blocks = self.empty.split_off(at);
        while blocks.len() < n {
            let (_, block) = self.evictable.pop_first().expect("counted as free");
            let key = self.key_of[block as usize]
                .take()
                .expect("cached blocks have keys");
            self.by_key.remove(&key);
            blocks.push(block);
        }
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

    /// A holder lets `blocks` go; each leaves with its last holder: to the cache if it is
    /// registered, else back to the empty blocks. Pass a sequence's blocks last first, so that
    /// the tail of a prefix is evicted before its head (the head is what others share).
    pub fn release(&mut self, blocks: impl IntoIterator<Item = BlockId>) {
        for block in blocks {
            debug_assert!(
                (block as usize) < self.total,
                "block {block} is not from this pool"
            );
            let holders = &mut self.holders[block as usize];
            debug_assert!(*holders > 0, "block {block} released twice");
            *holders = holders.saturating_sub(1);
            if *holders > 0 {
                continue;
            }
            if self.key_of[block as usize].is_some() {
                self.tick += 1;
                self.released_at[block as usize] = self.tick;
                self.evictable.insert(self.tick, block);
            } else {
                self.empty.push(block);
            }
        }
    }

    /// Registers held, full `block` under `key`, so later sequences with the same prefix may
    /// take it. A key already registered keeps its block (this one stays private to its
    /// holders); a block keeps its first key.
    pub fn register(&mut self, block: BlockId, key: BlockHash) {
        debug_assert!(self.holders(block) > 0, "only a held block is registered");
        if self.key_of[block as usize].is_some() || self.by_key.contains_key(&key) {
            return;
        }
        self.key_of[block as usize] = Some(key);
        self.by_key.insert(key, block);
    }

    /// Takes the cached block registered under `key`, if any: it gains a holder (and leaves the
    /// evictable ones if nobody held it).
    pub fn take_cached(&mut self, key: BlockHash) -> Option<BlockId> {
        let block = *self.by_key.get(&key)?;
        if self.holders[block as usize] == 0 {
            let removed = self.evictable.remove(&self.released_at[block as usize]);
            debug_assert_eq!(removed, Some(block));
        }
        self.holders[block as usize] += 1;
        Some(block)
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
        /// Start a sequence with this many new blocks, writing contents `key` into each.
        Allocate(usize, u8),
        /// Grow sequence `i % live` by this many blocks.
        Grow(usize, usize, u8),
        /// Free sequence `i % live` (finished, cancelled or preempted: all the same here).
        Free(usize),
        /// Register block `j` of sequence `i` under the key of its contents.
        Register(usize, usize),
        /// Start a sequence from the cached block of this key, if there is one.
        Hit(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..6, 0u8..8).prop_map(|(n, k)| Op::Allocate(n, k)),
            (any::<usize>(), 1usize..4, 0u8..8).prop_map(|(i, n, k)| Op::Grow(i, n, k)),
            any::<usize>().prop_map(Op::Free),
            (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Op::Register(i, j)),
            (0u8..8).prop_map(Op::Hit),
        ]
    }

    proptest! {
        /// Random allocate / hit / register / free (preempt, cancel) sequences: a block is never
        /// handed out while held, a hit always finds the contents registered under its key,
        /// holder counts match the sequences, and nothing leaks.
        #[test]
        fn eviction_never_takes_a_held_block_and_hits_find_their_contents(
            total in 1usize..48,
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            let mut pool = BlockAllocator::new(total);
            let mut sequences: Vec<Vec<BlockId>> = Vec::new();
            // What each block holds (the key of its contents), as written by its allocator.
            let mut contents: Vec<u8> = vec![u8::MAX; total];
            for op in ops {
                let held: HashSet<BlockId> = sequences.iter().flatten().copied().collect();
                match op {
                    Op::Allocate(n, key) => {
                        let before = pool.free_count();
                        match pool.allocate(n) {
                            Some(blocks) => {
                                prop_assert_eq!(blocks.len(), n);
                                for b in &blocks {
                                    prop_assert!(!held.contains(b), "block {} handed out while held", b);
                                    contents[*b as usize] = key;
                                }
                                sequences.push(blocks);
                            }
                            None => prop_assert_eq!(pool.free_count(), before),
                        }
                    }
                    Op::Grow(i, n, key) if !sequences.is_empty() => {
                        let i = i % sequences.len();
                        if let Some(more) = pool.allocate(n) {
                            for b in &more {
                                prop_assert!(!held.contains(b), "block {} handed out while held", b);
                                contents[*b as usize] = key;
                            }
                            sequences[i].extend(more);
                        }
                    }
                    Op::Free(i) if !sequences.is_empty() => {
                        let blocks = sequences.swap_remove(i % sequences.len());
                        pool.release(blocks.into_iter().rev());
                    }
                    Op::Register(i, j) if !sequences.is_empty() => {
                        let blocks = &sequences[i % sequences.len()];
                        if !blocks.is_empty() {
                            let b = blocks[j % blocks.len()];
                            pool.register(b, contents[b as usize] as BlockHash);
                        }
                    }
                    Op::Hit(key) => {
                        if let Some(b) = pool.take_cached(key as BlockHash) {
                            prop_assert_eq!(contents[b as usize], key, "a hit found other contents");
                            sequences.push(vec![b]);
                        }
                    }
                    _ => {}
                }
                let mut count = vec![0u32; total];
                for b in sequences.iter().flatten() {
                    count[*b as usize] += 1;
                }
                for (b, &n) in count.iter().enumerate() {
                    prop_assert_eq!(pool.holders(b as BlockId), n, "holders of block {}", b);
                }
                let distinct = count.iter().filter(|&&n| n > 0).count();
                prop_assert_eq!(distinct + pool.free_count(), total, "a block leaked");
                prop_assert!(pool.cached_count() <= total);
            }
            for blocks in sequences.drain(..) {
                pool.release(blocks.into_iter().rev());
            }
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
    fn cached_blocks_are_reused_while_free_and_evicted_least_recent_first() {
        let mut pool = BlockAllocator::new(4);
        let a = pool.allocate(2).unwrap();
        pool.register(a[0], 10);
        pool.register(a[1], 11);
        // Another block with a key already taken stays private.
        let b = pool.allocate(1).unwrap();
        pool.register(b[0], 10);
        pool.release(b.clone());
        assert_eq!(pool.cached_count(), 2);
        pool.release(a.iter().rev().copied());
        assert_eq!(pool.free_count(), 4, "cached blocks still count as free");
        // A hit takes the block back out of the free ones.
        assert_eq!(pool.take_cached(10), Some(a[0]));
        assert_eq!(pool.free_count(), 3);
        assert_eq!(pool.take_cached(12), None);
        // Three allocations: the empty blocks first, then the only cached block nobody holds.
        let c = pool.allocate(3).unwrap();
        assert!(c.contains(&a[1]));
        assert_eq!(pool.take_cached(11), None, "evicted");
        assert_eq!(pool.take_cached(10), Some(a[0]), "held: never evicted");
        assert!(pool.allocate(1).is_none());
    }

    #[test]
    fn the_tail_of_a_released_prefix_is_evicted_before_its_head() {
        let mut pool = BlockAllocator::new(3);
        let a = pool.allocate(3).unwrap();
        for (i, &block) in a.iter().enumerate() {
            pool.register(block, i as BlockHash);
        }
        pool.release(a.iter().rev().copied());
        let taken = pool.allocate(1).unwrap();
        assert_eq!(taken, vec![a[2]]);
        assert_eq!(pool.take_cached(0), Some(a[0]));
    }

    #[test]
    fn keys_chain_over_the_scope_and_every_earlier_token() {
        let tenant_a = scope_root(["tenant", "a"]);
        let tenant_b = scope_root(["tenant", "b"]);
        assert_ne!(chain_hash(tenant_a, [1, 2]), chain_hash(tenant_b, [1, 2]));
        let first = chain_hash(tenant_a, [1, 2]);
        let other_first = chain_hash(tenant_a, [1, 3]);
        assert_ne!(chain_hash(first, [4, 5]), chain_hash(other_first, [4, 5]));
        assert_eq!(
            chain_hash(first, [4, 5]),
            chain_hash(chain_hash(tenant_a, [1, 2]), [4, 5])
        );
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

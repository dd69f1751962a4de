//! The paged KV cache of the CPU path: every block of the pool, for every layer, in one f16
//! allocation for keys and one for values.
//!
//! Layout `[layer][block][kv_head][slot][head_dim]`: the positions of one block and one KV head
//! are contiguous, so attention streams a sequence's keys block by block straight from the
//! pool, through its block table, without gathering them first.
//!
//! Why f16: it halves the pool (SmolLM2 at its 8192-token context: 189 MB instead of 377 MB,
//! which is what keeps the serving process under 400 MB resident) and the bytes attention reads
//! per step, and F16C converts eight values in one instruction. The values are rounded once,
//! when written, so a sequence's attention does not depend on the batch it runs in.

/// The pool's geometry: where each block's slots are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    /// Layers.
    pub layers: usize,
    /// KV heads per layer.
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Positions per block.
    pub block_size: usize,
    /// Blocks in the pool.
    pub num_blocks: usize,
}

impl KvLayout {
    /// Offset of `(layer, block, head)`'s first slot.
    pub fn slab(&self, layer: usize, block: usize, head: usize) -> usize {
        debug_assert!(layer < self.layers && block < self.num_blocks && head < self.kv_heads);
        ((layer * self.num_blocks + block) * self.kv_heads + head) * self.block_size * self.head_dim
    }

    fn len(&self) -> usize {
        self.layers * self.num_blocks * self.kv_heads * self.block_size * self.head_dim
    }
}

/// Keys and values of every layer for a pool of fixed-size blocks.
pub struct KvPool {
    layout: KvLayout,
    /// f16 bit patterns. Allocated zeroed, so pages the pool never touches are never resident.
    keys: Vec<u16>,
    values: Vec<u16>,
}

impl KvPool {
    /// A pool with `layout`'s blocks.
    pub fn new(layout: KvLayout) -> Self {
        Self {
            layout,
            keys: vec![0; layout.len()],
            values: vec![0; layout.len()],
        }
    }

    /// Touches every page of the pool now, so a serving engine's memory is what it will be at
    /// full occupancy from the start, and no step pays for first-touch page faults.
    pub fn prefault(&mut self) {
        // One write per 4 KiB page is enough to map it.
        for data in [&mut self.keys, &mut self.values] {
            for page in data.chunks_mut(2048) {
                page[0] = 0;
                std::hint::black_box(&page[0]);
            }
        }
    }

    /// The geometry.
    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// Keys and values, read-only.
    pub fn data(&self) -> (&[u16], &[u16]) {
        (&self.keys, &self.values)
    }

    /// Keys and values, for writing new positions.
    pub fn data_mut(&mut self) -> (&mut [u16], &mut [u16]) {
        (&mut self.keys, &mut self.values)
    }
}

//! The paged KV cache of the candle path: per layer, one key and one value tensor holding every
//! block of the pool,
//! shaped `[kv_heads, blocks * block_size, head_dim]`, allocated once. A sequence owns a block
//! table; its position `p` lives in slot `table[p / block_size] * block_size + p % block_size`.

use candle_core::{DType, Device, Result, Tensor};

use super::config::{BlockTable, ModelConfig};
use super::kv_cache::KvSequence;

/// The block pool's storage.
pub struct PagedKvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    block_size: usize,
    num_blocks: usize,
}

impl PagedKvCache {
    /// A pool of `num_blocks` blocks of `block_size` positions per layer.
    pub fn new(
        config: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        device: &Device,
    ) -> Result<Self> {
        let shape = (config.n_kv_heads, num_blocks * block_size, config.head_dim);
        let zeros = || Tensor::zeros(shape, DType::F32, device);
        Ok(Self {
            keys: (0..config.n_layers)
                .map(|_| zeros())
                .collect::<Result<_>>()?,
            values: (0..config.n_layers)
                .map(|_| zeros())
                .collect::<Result<_>>()?,
            block_size,
            num_blocks,
        })
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// A sequence's view for one forward pass.
    pub fn sequence<'a>(&'a self, table: &'a mut BlockTable) -> PagedSequence<'a> {
        PagedSequence {
            cache: self,
            table,
            slots: None,
        }
    }
}

/// A sequence's view of the pool during a forward pass.
pub struct PagedSequence<'a> {
    cache: &'a PagedKvCache,
    table: &'a mut BlockTable,
    /// Slot of every position after this step, computed once and reused by every layer.
    slots: Option<Tensor>,
}

impl PagedSequence<'_> {
    fn slot(&self, position: usize) -> usize {
        let bs = self.cache.block_size;
        self.table.blocks[position / bs] as usize * bs + position % bs
    }
}

impl KvSequence for PagedSequence<'_> {
    fn len(&self) -> usize {
        self.table.len
    }

    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.dim(1)?;
        let start = self.table.len;
        let end = start + n;
        let bs = self.cache.block_size;
        if end > self.table.capacity(bs) {
            candle_core::bail!(
                "sequence needs {end} positions but holds blocks for {}",
                self.table.capacity(bs)
            );
        }
        // Write the new positions run by run: a run never crosses a block boundary.
        let mut position = start;
        while position < end {
            let run = (bs - position % bs).min(end - position);
            let slot = self.slot(position);
            let from = position - start;
            self.cache.keys[layer].slice_set(&k.narrow(1, from, run)?.contiguous()?, 1, slot)?;
            self.cache.values[layer].slice_set(&v.narrow(1, from, run)?.contiguous()?, 1, slot)?;
            position += run;
        }
        if self.slots.is_none() {
            let slots: Vec<u32> = (0..end).map(|p| self.slot(p) as u32).collect();
            self.slots = Some(Tensor::new(slots.as_slice(), k.device())?);
        }
        let slots = self.slots.as_ref().expect("set above");
        let k_all = self.cache.keys[layer].index_select(slots, 1)?;
        let v_all = self.cache.values[layer].index_select(slots, 1)?;
        if layer + 1 == self.cache.keys.len() {
            self.table.len = end;
        }
        Ok((k_all, v_all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::KvCache;

    fn config() -> ModelConfig {
        ModelConfig {
            architecture: crate::config::Architecture::Llama,
            n_layers: 2,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 2,
            hidden: 4,
            ffn: 8,
            rms_eps: 1e-5,
            rope_base: 10_000.0,
            rope_position_scale: 1.0,
            attention_scale: 1.0 / 2f32.sqrt(),
            embedding_scale: 1.0,
            sliding_window: None,
            context_length: 64,
            vocab_size: 8,
        }
    }

    /// `[1, n, 2]` keys whose values encode (step, position) so misplacement shows.
    fn kv(step: usize, n: usize) -> Tensor {
        let data: Vec<f32> = (0..n * 2).map(|i| (step * 100 + i) as f32).collect();
        Tensor::from_vec(data, (1, n, 2), &Device::Cpu).unwrap()
    }

    #[test]
    fn paged_view_returns_what_a_contiguous_cache_would() {
        let pool = PagedKvCache::new(&config(), 8, 4, &Device::Cpu).unwrap();
        // Deliberately scattered, non-increasing blocks.
        let mut table = BlockTable {
            blocks: vec![5, 2, 7],
            len: 0,
        };
        let mut reference = KvCache::new(2);
        for (step, n) in [(0, 3), (1, 1), (2, 5), (3, 1)] {
            let mut view = pool.sequence(&mut table);
            for layer in 0..2 {
                let (k, v) = view.append(layer, &kv(step, n), &kv(step + 50, n)).unwrap();
                let (rk, rv) = reference
                    .append(layer, &kv(step, n), &kv(step + 50, n))
                    .unwrap();
                assert_eq!(k.to_vec3::<f32>().unwrap(), rk.to_vec3::<f32>().unwrap());
                assert_eq!(v.to_vec3::<f32>().unwrap(), rv.to_vec3::<f32>().unwrap());
            }
            assert_eq!(table.len, reference.len());
        }
        assert_eq!(table.len, 10);
    }

    #[test]
    fn refuses_to_write_past_its_blocks() {
        let pool = PagedKvCache::new(&config(), 2, 4, &Device::Cpu).unwrap();
        let mut table = BlockTable {
            blocks: vec![1],
            len: 3,
        };
        let mut view = pool.sequence(&mut table);
        assert!(view.append(0, &kv(0, 2), &kv(0, 2)).is_err());
    }
}

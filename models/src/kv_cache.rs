//! Key/value storage of one sequence, as the model sees it: positions so far, and a way to add
//! new ones. Keys and values are shaped `[kv_heads, positions, head_dim]`.

use candle_core::{Result, Tensor};

/// The KV cache of one sequence during a forward pass.
pub trait KvSequence {
    /// Number of positions cached (the position of the next token).
    fn len(&self) -> usize;

    /// No position cached yet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores the keys and values of `n` new positions (`[kv_heads, n, head_dim]`) for `layer`
    /// and returns those of every position so far. The position count advances once the last
    /// layer has been appended.
    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)>;
}

/// A contiguous per-sequence cache that grows by concatenation: the simple reference used by
/// tests and single-sequence benchmarks. The request core uses the paged cache instead.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model of `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            len: 0,
        }
    }
}

impl KvSequence for KvCache {
    fn len(&self) -> usize {
        self.len
    }

    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k_all, v_all) = match &self.layers[layer] {
            None => (k.clone(), v.clone()),
            Some((k_old, v_old)) => (Tensor::cat(&[k_old, k], 1)?, Tensor::cat(&[v_old, v], 1)?),
        };
        self.layers[layer] = Some((k_all.clone(), v_all.clone()));
        if layer + 1 == self.layers.len() {
            self.len = k_all.dim(1)?;
        }
        Ok((k_all, v_all))
    }
}

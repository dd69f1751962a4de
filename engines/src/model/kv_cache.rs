//! The key/value cache of one sequence: per layer, keys and values of every position so far,
//! shaped `[kv_heads, positions, head_dim]`.

use candle_core::{Result, Tensor};

/// Per-sequence KV cache that grows by concatenation.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            len: 0,
        }
    }

    /// Number of positions cached (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the keys and values of new positions to `layer` and returns all of them.
    /// The position count advances when the last layer is appended.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
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

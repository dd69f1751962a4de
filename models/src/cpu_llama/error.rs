//! The CPU path's errors.

use cpu_kernels::matmul::ShapeError;
use cpu_kernels::quant::BLOCK;

/// Errors of the CPU path: bad weights at load, or a batch the caches cannot hold.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor could not be read from the file.
    #[error("{tensor}: {source}")]
    Read {
        /// The tensor's name.
        tensor: String,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },
    /// A tensor's shape does not fit the kernels.
    #[error("{tensor}: {source}")]
    Shape {
        /// The tensor's name.
        tensor: String,
        /// Why.
        #[source]
        source: ShapeError,
    },
    /// A matrix whose shape disagrees with the model's metadata.
    #[error("{tensor}: shape {found:?} disagrees with the metadata, which implies {expected:?}")]
    WrongShape {
        /// The tensor's name.
        tensor: String,
        /// Its `[outputs, inputs]`.
        found: [usize; 2],
        /// What the metadata implies.
        expected: [usize; 2],
    },
    /// A vector (norm weight, bias, RoPE factors) of the wrong length.
    #[error("{tensor}: {len} values, the metadata implies {expected}")]
    WrongLength {
        /// The tensor's name.
        tensor: String,
        /// Its length.
        len: usize,
        /// What the metadata implies.
        expected: usize,
    },
    /// A weight that must be a matrix is not.
    #[error("{tensor}: expected a matrix, found shape {dims:?}")]
    NotAMatrix {
        /// The tensor's name.
        tensor: String,
        /// Its shape.
        dims: Vec<usize>,
    },
    /// The model's shape is not one the kernels support.
    #[error("unsupported shape: hidden {hidden} (a multiple of {BLOCK} is needed), head size {head_dim}, {n_heads} heads over {n_kv_heads} KV heads")]
    UnsupportedShape {
        /// Hidden size.
        hidden: usize,
        /// Head size.
        head_dim: usize,
        /// Query heads.
        n_heads: usize,
        /// Key/value heads.
        n_kv_heads: usize,
    },
    /// A sequence would pass the context length.
    #[error("position {end} beyond the context length {context_length}")]
    BeyondContext {
        /// The position it would reach.
        end: usize,
        /// The model's context length.
        context_length: usize,
    },
    /// A sequence's blocks cannot hold its new tokens.
    #[error("sequence needs {needed} positions but holds blocks for {held}")]
    BlocksShort {
        /// Positions after the step.
        needed: usize,
        /// Positions its blocks hold.
        held: usize,
    },
    /// A block id past the pool.
    #[error("block {0} is not in the pool")]
    BlockOutsidePool(u32),
    /// A token id past the vocabulary.
    #[error("token id {0} is outside the vocabulary")]
    TokenOutsideVocabulary(u32),
    /// A step with nothing to run.
    #[error("forward called with no tokens")]
    EmptyStep,
}

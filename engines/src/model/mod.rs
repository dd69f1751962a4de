//! Model code: llama-family transformers over quantized GGUF weights.

pub mod kv_cache;
pub mod llama;
pub mod q8_matmul;

pub use kv_cache::{KvCache, KvSequence};
pub use llama::{LlamaConfig, LlamaModel, SequenceInput, WeightFormat};

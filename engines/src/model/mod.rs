//! Model code: llama-family transformers over quantized GGUF weights.

pub mod candle_llama;
pub mod candle_paged;
pub mod cpu;
pub mod kv_cache;
pub mod llama;

pub use llama::{
    BlockId, BlockTable, LlamaConfig, LlamaModel, SequenceInput, SoloCache, WeightFormat, Workspace,
};

//! Model code: llama-family transformers over quantized GGUF weights, for batches of flattened
//! tokens over a paged KV cache.
//!
//! `config` is what every implementation shares; [`LlamaModel`] is the one interface the local
//! engine's runner calls, over `cpu_llama` (the kernels of `cpu_kernels`) and `candle_llama` +
//! `candle_paged` (candle, for GPUs).

#![warn(missing_docs)]

pub mod candle_llama;
pub mod candle_paged;
pub mod config;
pub mod cpu_llama;
pub mod gguf_check;
pub mod kv_cache;
pub mod llama;
pub mod lora;

pub use config::{BlockId, BlockTable, ModelConfig, WeightFormat};
pub use llama::{Forward, LlamaModel, SequenceInput, SoloCache, Workspace};
pub use lora::{AdapterError, LoraAdapter};

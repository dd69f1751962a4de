//! Model code: llama-family transformers over quantized GGUF weights.
//!
//! `config` is what every implementation shares; `llama` is the one interface the request core
//! calls, over `cpu` (our kernels) and `candle_llama` + `candle_paged` (candle, for GPUs).

pub mod candle_llama;
pub mod candle_paged;
pub mod config;
pub mod cpu;
pub mod kv_cache;
pub mod llama;

pub use config::{BlockId, BlockTable, LlamaConfig, WeightFormat};
pub use llama::{LlamaModel, Pause, SequenceInput, SoloCache, Workspace};

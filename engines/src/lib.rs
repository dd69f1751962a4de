//! Model execution for the gateway: the engine interface, the local candle engine, llama model
//! code over quantized GGUF weights, tokenizer, chat template and sampling.
//!
//! The only HTTP here is the remote engine's client side (`remote`): the gateway turns this
//! crate's types and errors into responses.

#![warn(missing_docs)]

pub mod core;
pub mod device;
pub mod engine;
pub mod error;
pub mod local;
pub mod model;
pub mod model_fetch;
pub mod remote;
pub mod sampling;
pub mod synthetic;
pub mod text;
pub mod threads;

pub use core::{CoreConfig, StepRecord};
pub use device::DeviceSpec;
pub use engine::{
    Completion, Engine, EngineCounters, FinishReason, GenerationRequest, ModelInfo, PreparedPrompt,
    Prompt, Refusal, RequestTiming, TokenEvent, TokenStream, Usage, REMOTE_TOKEN_ID,
};
pub use error::EngineError;
pub use local::{LocalEngine, LocalEngineOptions};
pub use remote::{LoadReport, RemoteClient, RemoteEngine, RemoteOptions, ReportedLoad};
pub use sampling::SamplingParams;
pub use synthetic::{SyntheticEngine, SyntheticOptions};

/// The CPU kernel family the engines use on this machine (`avx512-vnni`, `avx2`, `portable`),
/// chosen at run time from CPUID and `GATEWAY_CPU_KERNELS`.
pub fn cpu_kernels() -> &'static str {
    model::cpu::isa::Isa::detect().name()
}

//! Model execution for the gateway: the engine interface, the local candle engine, llama model
//! code over quantized GGUF weights, tokenizer, chat template and sampling; sentence embeddings
//! (a BERT encoder on candle).
//!
//! The only HTTP here is the remote engine's client side (`remote`): the gateway turns this
//! crate's types and errors into responses.

#![warn(missing_docs)]

// Other crates use what the `pub use` lines below export, nothing deeper; the modules are public
// for this crate's own benchmarks and tests, which measure and check the kernels inside.
pub mod constraint;
pub mod core;
pub mod device;
pub mod embeddings;
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

pub use constraint::OutputConstraint;
pub use core::{CoreConfig, StepRecord};
pub use device::DeviceSpec;
pub use embeddings::{EmbeddingModel, EmbeddingOptions};
pub use engine::{
    prefix_cache_scope, Completion, Engine, EngineCounters, FinishReason, GenerationRequest,
    Logprobs, ModelInfo, PreparedPrompt, Prompt, Refusal, RequestTiming, TenantCounters,
    TokenEvent, TokenLogprob, TokenStream, Usage, REMOTE_TOKEN_ID,
};
pub use error::{EngineError, Result};
pub use local::{LoadedModel, LocalEngine, LocalEngineOptions, ModelFile};
pub use model::WeightFormat;
pub use model_fetch::{
    default_cache_dir, ensure_bundle, ensure_model, sha256_file, ModelBundle, ModelSource,
    DEFAULT_MODEL, DEFAULT_MODEL_ID, DEFAULT_MODEL_SAMPLING, EMBEDDING_MODEL, EMBEDDING_MODEL_ID,
};
pub use remote::{
    sse, wire, LoadReport, RemoteClient, RemoteEmbeddings, RemoteEngine, RemoteOptions,
    ReportedLoad, UpstreamError,
};
pub use sampling::{SamplingDefaults, SamplingParams};
pub use synthetic::{SyntheticEngine, SyntheticOptions};
pub use text::ChatMessage;
pub use threads::configure as configure_threads;

/// The CPU kernel family the engines use on this machine (`avx512-vnni`, `avx2`, `portable`),
/// chosen at run time from CPUID and `GATEWAY_CPU_KERNELS`.
pub fn cpu_kernels() -> &'static str {
    model::cpu::isa::Isa::detect().name()
}

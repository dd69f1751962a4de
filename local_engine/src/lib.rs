//! The local engine: a model loaded from a GGUF file, served by the request core (continuous
//! batching over a paged KV cache) on the CPU kernels or candle; its tokenizer, chat template,
//! sampling and structured output.
//!
//! What routing and the gateway know of engines is in `engine_api`; this crate implements it for
//! a model in this process: the loader (`loader`), the engine (`engine`), the runner that
//! runs the request core's steps on the model (`runner`), and what turns logits into tokens
//! (`decoding`, `sampling`, `text`). Scheduling is `request_core`'s, model code `models`', the
//! kernels `cpu_kernels`'.

#![warn(missing_docs)]

// Other crates use what the `pub use` lines below export, nothing deeper; the modules are public
// for this crate's own benchmarks and tests, which measure and check the parts inside.
pub mod adapters;
pub mod decoding;
pub mod device;
pub mod engine;
pub mod error;
pub mod loader;
pub mod runner;
pub mod sampling;
pub mod text;
pub mod threads;

pub use device::DeviceSpec;
pub use engine::{LocalEngine, LocalEngineOptions};
pub use loader::{model_id_from_file, LoadedModel, ModelFile};
pub use models::WeightFormat;
pub use request_core::{CoreConfig, StepRecord};
pub use threads::configure as configure_threads;

/// The CPU kernel family the engines use on this machine (`avx512-vnni`, `avx2`, `portable`),
/// chosen at run time from CPUID and `GATEWAY_CPU_KERNELS`.
pub fn cpu_kernels() -> &'static str {
    cpu_kernels::isa::Isa::detect().name()
}

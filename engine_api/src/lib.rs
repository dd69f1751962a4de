//! The engine interface: what routing and the gateway know of engines.
//!
//! A request ([`GenerationRequest`]: a [`Prompt`], [`SamplingParams`], its tenant and terms) goes
//! into an [`Engine`] and comes back as a [`TokenStream`] of [`TokenEvent`]s, ending in a
//! [`Completion`] with its [`Usage`], or a typed failure. Engines (the local model, a remote
//! upstream, the synthetic one) implement [`Engine`]; nothing here knows a model, a tokenizer or
//! HTTP, so that routing and the gateway compile without them.

#![warn(missing_docs)]

pub mod chat;
pub mod counters;
pub mod engine;
pub mod error;
pub mod events;
pub mod load;
pub mod prompt;
pub mod request;
pub mod sampling;
pub mod stream;
pub mod synthetic;
pub mod tools;

pub use chat::ChatMessage;
pub use counters::{EngineCounters, TenantCounters};
pub use engine::{Engine, ModelFileFacts, ModelInfo};
pub use error::{EngineError, Result};
pub use events::{
    Completion, Failure, FailureKind, FinishReason, Logprobs, Refusal, RequestTiming, TokenEvent,
    TokenLogprob, Usage, REMOTE_TOKEN_ID,
};
pub use load::{LoadReport, ProbeError, ReportedLoad};
pub use prompt::{PreparedPrompt, Prompt};
pub use request::{prefix_cache_scope, AdapterRef, GenerationRequest};
pub use sampling::{OutputConstraint, SamplingDefaults, SamplingParams, MAX_TOP_LOGPROBS};
pub use stream::{CollectedOutput, TokenStream, Unfinished};
pub use synthetic::{SyntheticEngine, SyntheticOptions};

//! The engine interface the gateway and routing talk to: `submit(request) -> token stream`.

use crate::counters::EngineCounters;
use crate::error::Result;
use crate::prompt::{PreparedPrompt, Prompt};
use crate::request::GenerationRequest;
use crate::sampling::SamplingDefaults;
use crate::stream::TokenStream;

/// Static facts about the model an engine serves.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The id clients use.
    pub id: String,
    /// Prompt plus completion tokens the model can hold.
    pub context_length: usize,
    /// Size of the vocabulary (0 when unknown: a remote engine).
    pub vocab_size: usize,
    /// What requests that leave a sampling setting out get (the file's recommendation; the
    /// gateway puts the operator's `[models.defaults]` over it).
    pub sampling_defaults: SamplingDefaults,
    /// What the model file says of itself (local engines; empty for remote and synthetic).
    pub file: ModelFileFacts,
}

/// What a model file says of itself, shown in `/v1/models`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelFileFacts {
    /// Its architecture, as GGUF names it (`llama`, `qwen2`, ...).
    pub architecture: Option<String>,
    /// Its quantization (`Q4_K_M`, `Q8_0`, ...).
    pub quantization: Option<String>,
}

/// Anything that turns requests into token streams: a local candle engine, the synthetic
/// benchmark engine, or a remote OpenAI-compatible upstream.
pub trait Engine: Send + Sync + 'static {
    /// What model this is.
    fn info(&self) -> &ModelInfo;

    /// Validates and enqueues a request; the stream starts at once. Errors here (prompt too
    /// long, template failure) are the caller's fault and nothing was enqueued.
    fn submit(&self, request: GenerationRequest) -> Result<TokenStream>;

    /// Submits several requests together (all or none). Engines that can should queue them
    /// atomically; the default submits one by one.
    fn submit_all(&self, requests: Vec<GenerationRequest>) -> Result<Vec<TokenStream>> {
        requests.into_iter().map(|r| self.submit(r)).collect()
    }

    /// Readies a prompt for submission and sizes it, without running it: local engines render
    /// the chat template and tokenise (callers then submit the ids), remote ones estimate.
    fn prepare_prompt(&self, prompt: &Prompt) -> Result<PreparedPrompt>;

    /// The engine's live counters, for metrics and `/load`.
    fn counters(&self) -> &EngineCounters;

    /// Ids of the LoRA adapters it holds loaded now (engines that load none: empty).
    fn loaded_adapters(&self) -> Vec<String> {
        Vec::new()
    }

    /// Reads the LoRA adapter file at `path` and checks it against this engine's model, without
    /// loading it: its rank. A file that does not fit is `InvalidInput` naming why (the tensor,
    /// the shape); an engine that runs no adapters refuses every file.
    fn check_adapter(&self, path: &std::path::Path) -> Result<usize> {
        let _ = path;
        Err(crate::EngineError::InvalidInput(format!(
            "model `{}` is served by an engine that runs no LoRA adapters",
            self.info().id
        )))
    }

    /// Unloads adapter `id` (deleted): sequences running with it finish as they are.
    fn unload_adapter(&self, id: &str) {
        let _ = id;
    }
}

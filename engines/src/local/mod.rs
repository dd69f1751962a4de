//! The local engine: a candle model in this process, driven by its own thread.

mod loader;
mod runner;
mod sequence;

pub use loader::{LoadedModel, LocalEngineOptions};
pub use sequence::Sequence;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::engine::{Engine, EngineCounters, GenerationRequest, ModelInfo, Prompt, TokenStream};
use crate::error::{EngineError, Result};

/// A request handed to the engine thread.
pub(crate) struct Job {
    pub prompt_ids: Vec<u32>,
    pub request: GenerationRequest,
    pub events: mpsc::UnboundedSender<crate::engine::TokenEvent>,
    pub submitted_at: Instant,
}

/// A candle model served by a dedicated thread. Model execution never runs on the async
/// runtime's workers: the gateway's tasks only enqueue and read channels.
pub struct LocalEngine {
    model: Arc<LoadedModel>,
    info: ModelInfo,
    jobs: crossbeam_channel::Sender<Job>,
    counters: Arc<EngineCounters>,
}

impl LocalEngine {
    /// Loads the model and starts the engine thread.
    pub fn start(id: &str, options: &LocalEngineOptions) -> Result<Self> {
        let model = Arc::new(LoadedModel::load(options)?);
        Ok(Self::with_model(id, model))
    }

    /// Starts an engine thread over an already loaded model.
    pub fn with_model(id: &str, model: Arc<LoadedModel>) -> Self {
        let info = ModelInfo {
            id: id.to_string(),
            context_length: model.model.config().context_length,
            vocab_size: model.model.config().vocab_size,
        };
        let counters = Arc::new(EngineCounters::default());
        let (jobs, queue) = crossbeam_channel::unbounded();
        let thread_model = model.clone();
        let thread_counters = counters.clone();
        std::thread::Builder::new()
            .name(format!("engine-{id}"))
            .spawn(move || runner::run(thread_model, queue, thread_counters))
            .expect("spawning the engine thread");
        Self {
            model,
            info,
            jobs,
            counters,
        }
    }

    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }
}

impl Engine for LocalEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn submit(&self, request: GenerationRequest) -> Result<TokenStream> {
        let prompt_ids = self.model.prompt_ids(&request.prompt)?;
        let context = self.info.context_length;
        if prompt_ids.len() + request.params.max_tokens > context {
            return Err(EngineError::ContextLengthExceeded {
                context_length: context,
                prompt_tokens: prompt_ids.len(),
                max_tokens: request.params.max_tokens,
            });
        }
        let (events, receiver) = mpsc::unbounded_channel();
        let prompt_tokens = prompt_ids.len();
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        self.counters.active.fetch_add(1, Ordering::Relaxed);
        self.jobs
            .send(Job {
                prompt_ids,
                request,
                events,
                submitted_at: Instant::now(),
            })
            .map_err(|_| EngineError::EngineStopped)?;
        Ok(TokenStream::new(prompt_tokens, receiver))
    }

    fn count_prompt_tokens(&self, prompt: &Prompt) -> Result<usize> {
        Ok(self.model.prompt_ids(prompt)?.len())
    }

    fn counters(&self) -> &EngineCounters {
        &self.counters
    }
}

//! The local engine: a model in this process, driven by its request core's thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::decoding::Decoding;
use crate::device::DeviceSpec;
use crate::error::{EngineError, Result};
use crate::loader::{LoadedModel, ModelFile};
use crate::runner::LocalRunner;
use engine_api::{
    Engine, EngineCounters, GenerationRequest, ModelInfo, PreparedPrompt, Prompt, TenantCounters,
    TokenStream,
};
use models::WeightFormat;
use policies::Priority;
use request_core::block_pool::{adapter_scope_root, scope_root};
use request_core::{num_blocks, CoreConfig, CoreHandle, Job, RequestCore, StepRecord};
use structured_output::ConstraintState;

/// How to load and run a local engine.
#[derive(Debug, Clone)]
pub struct LocalEngineOptions {
    /// The GGUF file.
    pub model_path: PathBuf,
    /// Where to run it.
    pub device: DeviceSpec,
    /// Keep the file's 4-bit weights, or re-quantize to 8 bits.
    pub weight_format: WeightFormat,
    /// The request core's limits and KV pool size.
    pub core: CoreConfig,
}

impl LocalEngineOptions {
    /// The model file to load, and how.
    pub fn model_file(&self) -> ModelFile {
        ModelFile {
            path: self.model_path.clone(),
            device: self.device,
            weight_format: self.weight_format,
        }
    }
}

/// A candle model served by a dedicated scheduler thread. Model execution never runs on the
/// async runtime's workers: the gateway's tasks only enqueue and read channels.
pub struct LocalEngine {
    model: Arc<LoadedModel>,
    info: ModelInfo,
    /// The request core's submitting side: one message is queued as a whole.
    core: CoreHandle<Decoding>,
    counters: Arc<EngineCounters>,
    next_id: AtomicU64,
    queue: QueueBounds,
    /// Whether requests' prompt blocks go to (and come from) the prefix cache.
    prefix_cache: bool,
}

impl LocalEngine {
    /// Loads the model and starts the request core.
    pub fn start(id: &str, options: &LocalEngineOptions) -> Result<Self> {
        let model = Arc::new(LoadedModel::load(&options.model_file())?);
        Self::with_model(id, model, &options.core)
    }

    /// Starts a request core over an already loaded model (several engines may share one).
    pub fn with_model(id: &str, model: Arc<LoadedModel>, core: &CoreConfig) -> Result<Self> {
        let info = ModelInfo {
            id: id.to_string(),
            context_length: model.model.config().context_length,
            vocab_size: model.model.config().vocab_size,
            sampling_defaults: model.sampling_defaults,
            file: model.facts.clone(),
        };
        let counters = Arc::new(EngineCounters::default());
        let blocks = num_blocks(core, info.context_length);
        let runner = LocalRunner::new(model.clone(), blocks, core.block_size)?;
        let name = format!("engine-{id}");
        let handle = RequestCore::start(name, runner, blocks, core, counters.clone())
            .map_err(|e| EngineError::Load(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            model,
            info,
            core: handle,
            counters,
            next_id: AtomicU64::new(0),
            queue: QueueBounds {
                max_waiting_per_tenant: core.max_waiting_per_tenant,
                shed_batch_above: core.shed_batch_above,
            },
            prefix_cache: core.prefix_cache,
        })
    }

    /// The loaded model (tokenizer, template, network).
    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }

    /// Records of every step so far, when the core was configured with `record_steps`.
    pub fn step_records(&self) -> Vec<StepRecord> {
        self.core.step_records()
    }
}

impl LocalEngine {
    /// Counts the requests into their tenants' waiting queues, or refuses them all: a tenant
    /// past its bound gets [`EngineError::QueueFull`], a batch-class request meeting a backed-up
    /// engine [`EngineError::Overloaded`]. Returns each request's tenant counters.
    fn enter_queue(&self, requests: &[GenerationRequest]) -> Result<Vec<Arc<TenantCounters>>> {
        let Some(first) = requests.first() else {
            return Ok(Vec::new());
        };
        // One submission is one caller's: the first request's tenant and terms speak for all.
        let n = requests.len() as u64;
        let tenant = self.counters.tenant(&first.tenant);
        if first.share.priority == Priority::Batch {
            let waiting: u64 = self
                .counters
                .tenants
                .iter()
                .map(|t| t.waiting.load(Ordering::Relaxed))
                .sum();
            if waiting + n > self.queue.shed_batch_above as u64 {
                tenant.refused.fetch_add(n, Ordering::Relaxed);
                return Err(EngineError::Overloaded {
                    waiting: waiting as usize,
                    limit: self.queue.shed_batch_above,
                });
            }
        }
        let limit = first
            .share
            .max_waiting
            .unwrap_or(self.queue.max_waiting_per_tenant) as u64;
        let before = tenant.waiting.fetch_add(n, Ordering::Relaxed);
        if before + n > limit {
            tenant.waiting.fetch_sub(n, Ordering::Relaxed);
            tenant.refused.fetch_add(n, Ordering::Relaxed);
            return Err(EngineError::QueueFull {
                waiting: before as usize,
                limit: limit as usize,
            });
        }
        Ok(vec![tenant; requests.len()])
    }
}

/// The bounds on an engine's waiting queue.
#[derive(Debug, Clone, Copy)]
struct QueueBounds {
    max_waiting_per_tenant: usize,
    shed_batch_above: usize,
}

impl Engine for LocalEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn submit(&self, request: GenerationRequest) -> Result<TokenStream> {
        Ok(self.submit_all(vec![request])?.remove(0))
    }

    /// Validates every request, then hands them to the core in one message, so they are
    /// queued together (one step never sees only some of them).
    fn submit_all(&self, requests: Vec<GenerationRequest>) -> Result<Vec<TokenStream>> {
        let limit = self.info.context_length.min(self.core.capacity_tokens());
        let mut prompts = Vec::with_capacity(requests.len());
        for request in &requests {
            let prompt_ids = self.model.prompt_ids(&request.prompt)?;
            if prompt_ids.len() + request.params.max_tokens > limit {
                return Err(EngineError::ContextLengthExceeded {
                    context_length: limit,
                    prompt_tokens: prompt_ids.len(),
                    max_tokens: request.params.max_tokens,
                });
            }
            prompts.push(prompt_ids);
        }
        // Schemas compile here, in the caller's thread: the scheduler only computes masks.
        let mut constraints = requests
            .iter()
            .map(|r| match &r.params.constraint {
                Some(c) => self
                    .model
                    .grammars
                    .matcher(c)
                    .map(|m| Some(ConstraintState::new(m))),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter();
        // Adapters load (or are found) before the request queues: a bad one is the request's
        // fault, answered now.
        let mut adapters = requests
            .iter()
            .map(|r| {
                r.adapter
                    .as_ref()
                    .map(|a| self.model.adapters.acquire(a))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter();
        let counters = self.enter_queue(&requests)?;
        // Requests of one submission with the same prompt (the `n` choices of one prompt) share
        // its KV blocks: each names the first of them.
        let first_with_prompt: Vec<usize> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| prompts[..i].iter().position(|q| q == p).unwrap_or(i))
            .collect();
        let first_id = self
            .next_id
            .fetch_add(requests.len() as u64, Ordering::Relaxed);
        let mut jobs = Vec::with_capacity(requests.len());
        let mut streams = Vec::with_capacity(requests.len());
        for (i, ((request, prompt_ids), counters)) in
            requests.into_iter().zip(prompts).zip(counters).enumerate()
        {
            let (events, receiver) = mpsc::unbounded_channel();
            let id = first_id + i as u64;
            let fork_of =
                (first_with_prompt[i] != i).then(|| first_id + first_with_prompt[i] as u64);
            // An adapter's keys and values differ from the base model's: its blocks are its
            // own scope within the request's, keyed by its file too (an id registered again
            // after a delete, with another file, is another adapter).
            let cache_root = self.prefix_cache.then(|| {
                let scope = request.prefix_cache_scope();
                match &request.adapter {
                    Some(adapter) => adapter_scope_root(
                        scope,
                        &format!("{}\0{}", adapter.id, adapter.path.display()),
                    ),
                    None => scope_root(scope),
                }
            });
            streams.push(TokenStream::new(id, prompt_ids.len(), receiver));
            let constraint = constraints.next().flatten();
            let mut decoding = Decoding::new(request.params.clone(), &prompt_ids, constraint);
            let adapter = match adapters.next().flatten() {
                Some((slot, pinned)) => {
                    decoding.pin(pinned);
                    Some(slot)
                }
                None => None,
            };
            jobs.push(Job {
                adapter,
                id,
                prompt_ids,
                request,
                events,
                submitted_at: Instant::now(),
                counters,
                decoding,
                fork_of,
                cache_root,
            });
        }
        let count = jobs.len() as u64;
        self.core.submit(jobs).map_err(|jobs| {
            for job in &jobs {
                job.counters.waiting.fetch_sub(1, Ordering::Relaxed);
            }
            EngineError::EngineStopped
        })?;
        self.counters.submitted.fetch_add(count, Ordering::Relaxed);
        Ok(streams)
    }

    fn prepare_prompt(&self, prompt: &Prompt) -> Result<PreparedPrompt> {
        Ok(PreparedPrompt::tokenized(self.model.prompt_ids(prompt)?))
    }

    fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    fn loaded_adapters(&self) -> Vec<String> {
        self.model.adapters.loaded()
    }

    fn check_adapter(&self, path: &std::path::Path) -> Result<usize> {
        self.model.adapters.check(path)
    }

    fn unload_adapter(&self, id: &str) {
        self.model.adapters.unload(id)
    }
}

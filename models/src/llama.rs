//! The llama architecture (SmolLM2, Llama 2/3, Mistral without sliding window, ...) over
//! quantized GGUF weights, for batches of flattened tokens over a paged KV cache.
//!
//! Two implementations stand behind [`LlamaModel`]: on the CPU the kernels of `cpu_kernels`
//! (repacked weights, int8 dot products chosen by CPU feature at run time, attention reading
//! the paged cache in place); on GPUs candle's tensors and kernels ([`crate::candle_llama`]).
//! Callers see one interface: a [`Workspace`] (KV pool and step buffers) per request core, and
//! one [`LlamaModel::forward`] per step.

use std::io::{Read, Seek};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Result, Tensor, D};

use super::candle_llama::{CandleInput, CandleLlama};
use super::candle_paged::PagedKvCache;
use super::config::{BlockId, BlockTable, ModelConfig, WeightFormat};
use crate::cpu_llama::{CpuLlama, Progress as CpuProgress, Scratch, StepSequence};
use cpu_kernels::kv::KvPool;

/// The new tokens of one sequence in a forward pass.
pub struct SequenceInput<'a> {
    /// The new tokens; the first goes at position `table.len`.
    pub tokens: &'a [u32],
    /// The sequence's blocks, which must hold every position after this step; its length
    /// advances by `tokens.len()`.
    pub table: &'a mut BlockTable,
    /// Whether logits of the last token are wanted (false for a prefill chunk that is not last).
    pub wants_logits: bool,
    /// The LoRA adapter whose terms its projections add (loaded for this model), if any.
    pub adapter: Option<&'a crate::lora::LoraAdapter>,
}

enum Backend {
    Cpu(Box<CpuLlama>),
    Candle(Box<CandleLlama>),
}

/// A loaded llama model. Immutable and shareable: per-engine state lives in a [`Workspace`].
pub struct LlamaModel {
    backend: Backend,
    device: Device,
}

enum WorkspaceKind {
    Cpu {
        kv: KvPool,
        scratch: Box<Scratch>,
        /// Buffers of the steps run while a step is paused between layers.
        urgent: Box<Scratch>,
    },
    Candle(PagedKvCache),
}

/// How far a step came ([`LlamaModel::forward_from`]).
pub enum Forward {
    /// The logits `[n, vocab]` of the sequences that want them, in batch order.
    Done(Tensor),
    /// Stopped between layers (CPU path); goes on from this layer.
    PausedBefore(usize),
}

fn cpu_forward(
    model: &CpuLlama,
    kv: &mut KvPool,
    scratch: &mut Scratch,
    batch: &mut [SequenceInput<'_>],
    first_layer: usize,
    pause: &dyn Fn() -> bool,
) -> Result<Forward> {
    let vocab = model.config().vocab_size;
    let mut steps: Vec<StepSequence<'_>> = batch
        .iter_mut()
        .map(|s| StepSequence {
            tokens: s.tokens,
            table: &mut *s.table,
            wants_logits: s.wants_logits,
            adapter: s.adapter,
        })
        .collect();
    let progress = model
        .forward_from(kv, scratch, &mut steps, first_layer, pause)
        .map_err(cpu_error)?;
    Ok(match progress {
        CpuProgress::Done(logits) => {
            let rows = logits.len() / vocab;
            Forward::Done(Tensor::from_vec(logits, (rows, vocab), &Device::Cpu)?)
        }
        CpuProgress::PausedBefore(layer) => Forward::PausedBefore(layer),
    })
}

/// What one request core needs besides the model: the KV pool and the step buffers.
pub struct Workspace {
    kind: WorkspaceKind,
}

impl Workspace {
    /// Maps the whole KV pool into memory now (a serving engine's steady footprint from the
    /// start, and no page faults in its steps). A no-op for GPU pools, allocated up front.
    pub fn prefault(&mut self) {
        if let WorkspaceKind::Cpu { kv, .. } = &mut self.kind {
            kv.prefault();
        }
    }
}

/// One sequence with a pool of its own, large enough for the whole context: single-sequence
/// use (tests, benchmarks) without a request core.
pub struct SoloCache {
    workspace: Workspace,
    table: BlockTable,
}

impl SoloCache {
    /// Positions so far.
    pub fn len(&self) -> usize {
        self.table.len
    }

    /// Whether nothing has been run yet.
    pub fn is_empty(&self) -> bool {
        self.table.len == 0
    }
}

/// The CPU path's typed error, carried inside candle's (the interface both paths share).
fn cpu_error(e: crate::cpu_llama::Error) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

/// Positions per block of a [`SoloCache`].
const SOLO_BLOCK: usize = 16;

impl LlamaModel {
    /// Loads weights from a GGUF file: the CPU kernels on `Device::Cpu`, candle on a GPU.
    /// SmolLM2 ties its output projection to the token embedding: without `output.weight`,
    /// `token_embd.weight` is used for both.
    pub fn from_gguf<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
        if !device.is_cpu() {
            return Self::from_gguf_candle(ct, reader, device, format);
        }
        let config = ModelConfig::from_gguf(ct).map_err(candle_core::Error::wrap)?;
        let model = CpuLlama::from_gguf(ct, reader, config, format).map_err(cpu_error)?;
        Ok(Self {
            backend: Backend::Cpu(Box::new(model)),
            device: Device::Cpu,
        })
    }

    /// Loads weights for candle's tensors and kernels on any device (on the CPU: the reference
    /// the fast path is tested against).
    pub fn from_gguf_candle<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
        Ok(Self {
            backend: Backend::Candle(Box::new(CandleLlama::from_gguf(
                ct, reader, device, format,
            )?)),
            device: device.clone(),
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
        match &self.backend {
            Backend::Cpu(m) => m.config(),
            Backend::Candle(m) => m.config(),
        }
    }

    /// Where the model runs.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes the weights take in memory on the CPU path (`None` on candle's).
    pub fn weight_bytes(&self) -> Option<usize> {
        match &self.backend {
            Backend::Cpu(m) => Some(m.weight_bytes()),
            Backend::Candle(_) => None,
        }
    }

    /// Which implementation runs: the CPU kernel family (`avx512-vnni`, `avx2`, `portable`)
    /// or `candle`.
    pub fn kernels(&self) -> &'static str {
        match &self.backend {
            Backend::Cpu(m) => m.isa().name(),
            Backend::Candle(_) => "candle",
        }
    }

    /// A KV pool of `num_blocks` blocks of `block_size` positions, with its step buffers.
    pub fn new_workspace(&self, num_blocks: usize, block_size: usize) -> Result<Workspace> {
        let kind = match &self.backend {
            Backend::Cpu(m) => WorkspaceKind::Cpu {
                kv: m.new_kv_pool(num_blocks, block_size),
                scratch: Box::new(m.new_scratch()),
                urgent: Box::new(m.new_scratch()),
            },
            Backend::Candle(m) => WorkspaceKind::Candle(PagedKvCache::new(
                m.config(),
                num_blocks,
                block_size,
                &self.device,
            )?),
        };
        Ok(Workspace { kind })
    }

    /// Runs one step over the new tokens of every sequence in `batch`, writing their keys and
    /// values into `workspace`'s pool. Returns logits `[n, vocab]` for the last token of each
    /// sequence with `wants_logits`, in batch order.
    pub fn forward(
        &self,
        workspace: &mut Workspace,
        batch: &mut [SequenceInput<'_>],
    ) -> Result<Tensor> {
        match self.forward_from(workspace, batch, 0, &|| false)? {
            Forward::Done(logits) => Ok(logits),
            Forward::PausedBefore(_) => candle_core::bail!("a step that may not pause paused"),
        }
    }

    /// [`Self::forward`] from layer `first_layer` on (0: from the start), stopping between two
    /// layers when `pause()` says so: other sequences' steps may then run
    /// ([`Self::forward_beside`]) before this one goes on from the layer it names, with the same
    /// workspace and batch. Only the CPU path pauses; on GPUs a step is short and runs whole.
    pub fn forward_from(
        &self,
        workspace: &mut Workspace,
        batch: &mut [SequenceInput<'_>],
        first_layer: usize,
        pause: &dyn Fn() -> bool,
    ) -> Result<Forward> {
        match (&self.backend, &mut workspace.kind) {
            (Backend::Cpu(m), WorkspaceKind::Cpu { kv, scratch, .. }) => {
                cpu_forward(m, kv, scratch, batch, first_layer, pause)
            }
            (Backend::Candle(m), WorkspaceKind::Candle(cache)) => {
                if batch.iter().any(|s| s.adapter.is_some()) {
                    candle_core::bail!(
                        "LoRA adapters are served on the CPU path only, not yet on GPUs"
                    );
                }
                let shapes: Vec<(&[u32], bool)> =
                    batch.iter().map(|s| (s.tokens, s.wants_logits)).collect();
                let mut views: Vec<_> = batch.iter_mut().map(|s| cache.sequence(s.table)).collect();
                let mut inputs: Vec<CandleInput<'_>> = views
                    .iter_mut()
                    .zip(shapes)
                    .map(|(view, (tokens, wants_logits))| CandleInput {
                        tokens,
                        cache: view,
                        wants_logits,
                    })
                    .collect();
                m.forward(&mut inputs).map(Forward::Done)
            }
            _ => candle_core::bail!("workspace made for another model"),
        }
    }

    /// Runs a whole step over `batch` while another step is paused, in buffers of its own and
    /// its own blocks of the same pool (the CPU path; elsewhere no step pauses).
    pub fn forward_beside(
        &self,
        workspace: &mut Workspace,
        batch: &mut [SequenceInput<'_>],
    ) -> Result<Tensor> {
        match (&self.backend, &mut workspace.kind) {
            (Backend::Cpu(m), WorkspaceKind::Cpu { kv, urgent, .. }) => {
                match cpu_forward(m, kv, urgent, batch, 0, &|| false)? {
                    Forward::Done(logits) => Ok(logits),
                    Forward::PausedBefore(_) => unreachable!("never asked to pause"),
                }
            }
            _ => self.forward(workspace, batch),
        }
    }

    /// A fresh single-sequence cache for the whole context.
    pub fn new_cache(&self) -> Result<SoloCache> {
        let num_blocks = self.config().context_length.div_ceil(SOLO_BLOCK);
        Ok(SoloCache {
            workspace: self.new_workspace(num_blocks, SOLO_BLOCK)?,
            table: BlockTable {
                blocks: (0..num_blocks as BlockId).collect(),
                len: 0,
            },
        })
    }

    /// Runs `tokens` of the sequence in `cache`; logits `[1, vocab]` of the last token, or
    /// `[0, vocab]` if not `wants_logits`.
    pub fn forward_solo(
        &self,
        cache: &mut SoloCache,
        tokens: &[u32],
        wants_logits: bool,
    ) -> Result<Tensor> {
        self.forward_solo_adapted(cache, tokens, wants_logits, None)
    }

    /// [`Self::forward_solo`] with `adapter`'s terms added to the projections.
    pub fn forward_solo_adapted(
        &self,
        cache: &mut SoloCache,
        tokens: &[u32],
        wants_logits: bool,
        adapter: Option<&crate::lora::LoraAdapter>,
    ) -> Result<Tensor> {
        let SoloCache { workspace, table } = cache;
        self.forward(
            workspace,
            &mut [SequenceInput {
                tokens,
                table,
                wants_logits,
                adapter,
            }],
        )
    }
}

/// Index of the largest logit in a `[vocab]` row.
pub fn argmax(logits: &Tensor) -> Result<u32> {
    logits.argmax(D::Minus1)?.to_scalar::<u32>()
}

//! The local engine's [`ModelRunner`]: the request core's steps on a loaded model, in one
//! [`Workspace`] (the KV pool and the step buffers), and the sampling of their logits.

use std::sync::{Arc, Mutex};

use candle_core::{IndexOp, Tensor};

use engine_api::{EngineError, Result};
use models::{BlockTable, Forward, LoraAdapter, SequenceInput, Workspace};
use request_core::{ModelRunner, PausePoint, Progress, Sampled, StepInput};

use crate::decoding::Decoding;
use crate::error::OrExecution;
use crate::loader::LoadedModel;

/// A step paused between layers: its input and the layer it goes on from. (The model's block
/// tables are made from the input again on resuming: a step advances them only at its end.)
struct PausedStep {
    input: StepInput,
    next_layer: usize,
}

/// Runs steps over one loaded model.
pub struct LocalRunner {
    model: Arc<LoadedModel>,
    workspace: Workspace,
    paused: Option<PausedStep>,
}

impl LocalRunner {
    /// A runner over `model` with a KV pool of `num_blocks` blocks of `block_size` positions,
    /// mapped into memory now (a serving engine's steady footprint from the start).
    pub fn new(model: Arc<LoadedModel>, num_blocks: usize, block_size: usize) -> Result<Self> {
        let mut workspace = model
            .model
            .new_workspace(num_blocks, block_size)
            .or_execution()?;
        workspace.prefault();
        Ok(Self {
            model,
            workspace,
            paused: None,
        })
    }

    /// Runs `input` from `first_layer` on, keeping it when the step pauses.
    fn run_from(
        &mut self,
        input: StepInput,
        first_layer: usize,
        pause: &PausePoint<'_>,
    ) -> Result<Progress<Tensor>> {
        let mut tables = tables_of(&input);
        let adapters = adapters_of(&self.model, &input);
        let requested = || pause.requested();
        let forward = {
            let mut batch = batch_of(&input, &mut tables, &adapters);
            let model = &self.model.model;
            model.forward_from(&mut self.workspace, &mut batch, first_layer, &requested)
        };
        match forward.or_execution()? {
            Forward::Done(logits) => Ok(Progress::Done(logits)),
            Forward::PausedBefore(next_layer) => {
                self.paused = Some(PausedStep { input, next_layer });
                Ok(Progress::Paused)
            }
        }
    }
}

/// The model's view of a step: each chunk's tokens over its own copy of the block table, with
/// its adapter (`adapters[i]` for chunk `i`).
fn batch_of<'a>(
    input: &'a StepInput,
    tables: &'a mut [BlockTable],
    adapters: &'a [Option<Arc<LoraAdapter>>],
) -> Vec<SequenceInput<'a>> {
    input
        .chunks
        .iter()
        .zip(tables)
        .zip(adapters)
        .map(|((chunk, table), adapter)| SequenceInput {
            tokens: &chunk.tokens,
            table,
            wants_logits: chunk.samples,
            adapter: adapter.as_deref(),
        })
        .collect()
}

/// Each chunk's adapter, from the model's loaded adapters (its sequence pins it, so it is
/// there while the sequence runs).
fn adapters_of(model: &LoadedModel, input: &StepInput) -> Vec<Option<Arc<LoraAdapter>>> {
    input
        .chunks
        .iter()
        .map(|c| c.adapter.and_then(|slot| model.adapters.get(slot)))
        .collect()
}

/// The model's block tables for a step (the core's, copied: the core advances its own).
fn tables_of(input: &StepInput) -> Vec<BlockTable> {
    let table = |c: &request_core::ChunkInput| BlockTable {
        blocks: c.table.blocks.clone(),
        len: c.table.len,
    };
    input.chunks.iter().map(table).collect()
}

impl ModelRunner for LocalRunner {
    type Decoding = Decoding;
    type Logits = Tensor;

    fn start(&mut self, step: StepInput, pause: &PausePoint<'_>) -> Result<Progress<Tensor>> {
        self.run_from(step, 0, pause)
    }

    fn resume(&mut self, pause: &PausePoint<'_>) -> Result<Progress<Tensor>> {
        let paused = self.paused.take().ok_or(EngineError::EngineStopped)?;
        self.run_from(paused.input, paused.next_layer, pause)
    }

    fn run_beside(&mut self, step: StepInput) -> Result<Tensor> {
        let mut tables = tables_of(&step);
        let adapters = adapters_of(&self.model, &step);
        let mut batch = batch_of(&step, &mut tables, &adapters);
        let model = &self.model.model;
        model
            .forward_beside(&mut self.workspace, &mut batch)
            .or_execution()
    }

    fn sample(&mut self, logits: &Tensor, decodings: &mut [&mut Decoding]) -> Vec<Result<Sampled>> {
        prepare_masks(decodings);
        let tokenizer = &self.model.tokenizer;
        decodings
            .iter_mut()
            .enumerate()
            .map(|(row, decoding)| {
                let row = logits.i(row).map_err(EngineError::execution)?;
                decoding.sample(&row, tokenizer)
            })
            .collect()
    }
}

/// Computes the grammar masks of every constrained sequence about to sample, spread over the
/// model's threads (the other threads would otherwise idle while the core's thread samples).
/// A sequence whose mask fails here fails when it samples.
fn prepare_masks(decodings: &mut [&mut Decoding]) {
    let states: Vec<Mutex<&mut structured_output::ConstraintState>> = decodings
        .iter_mut()
        .filter_map(|d| d.constraint.as_mut().map(Mutex::new))
        .collect();
    if states.len() < 2 {
        return;
    }
    cpu_kernels::parallel::for_each_chunk(states.len(), 1, |_, range| {
        for state in &states[range] {
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            // An error is kept by the matcher and reported again at sampling.
            let _ = state.prepare();
        }
    });
}

//! The engine thread: one sequence at a time, prompt in chunks, then one token per step.
//! (The continuous-batching request core replaces this loop; the interface stays.)

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::engine::EngineCounters;
use crate::error::Result;
use crate::model::SequenceInput;

use super::sequence::{Next, Sequence};
use super::{Job, LoadedModel};

/// Prompt tokens per forward pass: bounds the attention score matrix of long prompts.
const PREFILL_CHUNK: usize = 512;

pub(crate) fn run(
    model: Arc<LoadedModel>,
    queue: crossbeam_channel::Receiver<Job>,
    counters: Arc<EngineCounters>,
) {
    while let Ok(job) = queue.recv() {
        let mut seq = Sequence::new(
            job.prompt_ids,
            job.request.params,
            model.model.new_cache(),
            job.events,
            job.submitted_at,
        );
        seq.timing.queue = job.submitted_at.elapsed();
        counters
            .prompt_tokens
            .fetch_add(seq.prompt_ids.len() as u64, Ordering::Relaxed);
        match generate(&model, &mut seq, &counters) {
            Ok(Outcome::Finished) => counters.finished.fetch_add(1, Ordering::Relaxed),
            Ok(Outcome::Cancelled) => counters.cancelled.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tracing::error!(error = %e, "generation failed");
                seq.fail(e.to_string());
                counters.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Outcome {
    Finished,
    Cancelled,
}

fn generate(model: &LoadedModel, seq: &mut Sequence, counters: &EngineCounters) -> Result<Outcome> {
    let prefill_started = Instant::now();
    let prompt = std::mem::take(&mut seq.prompt_ids);
    let chunks: Vec<&[u32]> = prompt.chunks(PREFILL_CHUNK).collect();
    let mut logits = None;
    for (i, chunk) in chunks.iter().enumerate() {
        if seq.is_cancelled() {
            seq.prompt_ids = prompt;
            return Ok(Outcome::Cancelled);
        }
        let wants_logits = i + 1 == chunks.len();
        let out = model.model.forward(&mut [SequenceInput {
            tokens: chunk,
            cache: &mut seq.cache,
            wants_logits,
        }])?;
        counters.steps.fetch_add(1, Ordering::Relaxed);
        if wants_logits {
            logits = Some(out);
        }
    }
    seq.prompt_ids = prompt;
    seq.timing.prefill = prefill_started.elapsed();
    let mut logits = logits
        .expect("a non-empty prompt yields logits")
        .squeeze(0)?;
    loop {
        let next = seq.accept_logits(&logits, &model.tokenizer)?;
        counters.generated_tokens.fetch_add(1, Ordering::Relaxed);
        if next == Next::Finished {
            return Ok(Outcome::Finished);
        }
        if seq.is_cancelled() {
            return Ok(Outcome::Cancelled);
        }
        let last = *seq.generated.last().expect("a token was just generated");
        logits = model
            .model
            .forward(&mut [SequenceInput {
                tokens: &[last],
                cache: &mut seq.cache,
                wants_logits: true,
            }])?
            .squeeze(0)?;
        counters.steps.fetch_add(1, Ordering::Relaxed);
    }
}

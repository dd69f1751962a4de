//! One sequence being generated: its tokens, block table, sampler, streaming decoder and stop
//! strings, and the rules that turn a sampled token into events for the client.

use policies::{Share, TenantId};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use tokio::sync::mpsc;

use super::block_allocator::{chain_hash, BlockHash};
use crate::error::OrExecution;
use crate::error::Result;
use crate::sampling::{top_logprobs, Sampler};
use crate::text::stop::StopOutcome;
use crate::text::{GgufTokenizer, IncrementalDecoder, StopMatcher};
use engine_api::SamplingParams;
use engine_api::{
    Completion, FinishReason, Logprobs, RequestTiming, TenantCounters, TokenEvent, TokenLogprob,
    Usage,
};
use structured_output::ConstraintState;

use models::BlockTable;

/// Identifies a submission inside one engine.
pub type SequenceId = u64;

/// The generation state of one request.
pub struct Sequence {
    /// The engine's id of the request.
    pub id: SequenceId,
    /// Who asked: the fair-share unit.
    pub tenant: TenantId,
    /// The tenant's scheduling terms (weight, class, caps).
    pub share: Share,
    /// The tenant's counters in this engine.
    pub counters: Arc<TenantCounters>,
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// Tokens sampled so far.
    pub generated: Vec<u32>,
    /// KV blocks and the number of positions computed into them.
    pub table: BlockTable,
    /// How to sample and when to stop.
    pub params: SamplingParams,
    sampler: Sampler,
    /// The grammar the output must follow, if the request has one.
    pub constraint: Option<ConstraintState>,
    decoder: IncrementalDecoder,
    stops: StopMatcher,
    events: mpsc::UnboundedSender<TokenEvent>,
    /// Its phases' durations, reported at the end.
    pub timing: RequestTiming,
    /// When it was submitted.
    pub submitted_at: Instant,
    /// When the sequence first entered the running batch.
    pub admitted_at: Option<Instant>,
    /// Order of the latest admission: the highest is preempted first.
    pub admission: u64,
    /// Times the sequence was preempted (its blocks freed, to be recomputed).
    pub preemptions: usize,
    /// The last step that ran it: when lower classes get only a few tokens per step, the
    /// least recently served go first.
    pub last_step: u64,
    /// Another sequence with the same prompt (a choice of the same request): this one waits
    /// until that one has computed the prompt, then shares its full KV blocks.
    pub fork_of: Option<SequenceId>,
    /// The root key of its prefix-cache scope (`None`: the cache is off for it).
    pub cache_root: Option<BlockHash>,
    /// The keys of its full blocks, as far as computed (tokens never change, so they stay
    /// valid across preemptions).
    block_keys: Vec<BlockHash>,
    /// Blocks of its table registered in the prefix cache (or found there).
    pub registered_blocks: usize,
    /// Prompt tokens found in the prefix cache at its first admission (not computed).
    pub cached_tokens: usize,
}

/// What the engine should do with a sequence after a token.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep generating.
    Continue,
    /// The sequence ended (stop, length, or its client left).
    Finished,
}

impl Sequence {
    /// A waiting sequence for a submitted request.
    pub fn new(
        id: SequenceId,
        tenant: TenantId,
        prompt_ids: Vec<u32>,
        params: SamplingParams,
        events: mpsc::UnboundedSender<TokenEvent>,
        submitted_at: Instant,
    ) -> Self {
        Self {
            id,
            tenant,
            share: Share::default(),
            counters: Arc::default(),
            sampler: Sampler::new(&params).with_prompt(&prompt_ids),
            constraint: None,
            stops: StopMatcher::new(params.stop.clone()),
            prompt_ids,
            generated: Vec::new(),
            table: BlockTable::default(),
            params,
            decoder: IncrementalDecoder::new(),
            events,
            timing: RequestTiming::default(),
            submitted_at,
            admitted_at: None,
            admission: 0,
            preemptions: 0,
            last_step: 0,
            fork_of: None,
            cache_root: None,
            block_keys: Vec::new(),
            registered_blocks: 0,
            cached_tokens: 0,
        }
    }

    /// The prefix-cache key of full block `k` (its tokens must exist): chained over the scope
    /// and every token up to the block's end.
    pub fn block_key(&mut self, k: usize, block_size: usize) -> Option<BlockHash> {
        let root = self.cache_root?;
        while self.block_keys.len() <= k {
            let at = self.block_keys.len();
            let previous = self.block_keys.last().copied().unwrap_or(root);
            debug_assert!(
                (at + 1) * block_size <= self.total_tokens(),
                "block {at} is not full"
            );
            let tokens = self
                .prompt_ids
                .iter()
                .chain(&self.generated)
                .skip(at * block_size)
                .take(block_size)
                .copied();
            self.block_keys.push(chain_hash(previous, tokens));
        }
        Some(self.block_keys[k])
    }

    /// Prompt and generated tokens.
    pub fn total_tokens(&self) -> usize {
        self.prompt_ids.len() + self.generated.len()
    }

    /// Positions whose keys and values are in the cache.
    pub fn computed(&self) -> usize {
        self.table.len
    }

    /// Tokens still to run through the model before the next sample: the rest of the prompt
    /// (and, after a preemption, of the generated text), or 1 while decoding.
    pub fn pending(&self) -> usize {
        self.total_tokens() - self.computed()
    }

    /// The next `n` tokens to compute.
    pub fn next_tokens(&self, n: usize) -> Vec<u32> {
        let start = self.computed();
        self.prompt_ids
            .iter()
            .chain(&self.generated)
            .skip(start)
            .take(n)
            .copied()
            .collect()
    }

    /// Is the sequence still in its prompt (first pass or recompute after preemption)?
    pub fn is_prefilling(&self) -> bool {
        self.pending() > 1 || self.generated.is_empty()
    }

    /// The client dropped its receiver.
    pub fn is_cancelled(&self) -> bool {
        self.events.is_closed()
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_ids.len(),
            completion_tokens: self.generated.len(),
            cached_tokens: self.cached_tokens,
            prompt_estimated: false,
        }
    }

    /// Samples from `logits`, streams the result, and says whether generation goes on.
    pub fn accept_logits(&mut self, logits: &Tensor, tokenizer: &GgufTokenizer) -> Result<Next> {
        let (token, logprobs) = self.sample(logits, tokenizer)?;
        if self.generated.is_empty() {
            self.timing.time_to_first_token = self.submitted_at.elapsed();
            if let Some(admitted) = self.admitted_at {
                self.timing.prefill = admitted.elapsed();
            }
        } else {
            self.timing.decode_steps += 1;
        }
        self.generated.push(token);
        let is_eos = !self.params.ignore_eos && tokenizer.eos_ids().contains(&token);
        if is_eos {
            return Ok(self.finish(token, String::new(), logprobs, FinishReason::Stop));
        }
        // A grammar that is complete admits nothing but the end: the output ends here.
        let grammar_done = match &mut self.constraint {
            Some(constraint) => constraint.advance(token)?,
            None => false,
        };
        let delta = self.decoder.step(tokenizer, token)?.unwrap_or_default();
        match self.stops.push(&delta) {
            StopOutcome::Stopped(text) => {
                Ok(self.finish(token, text, logprobs, FinishReason::Stop))
            }
            StopOutcome::Continue(text)
                if grammar_done || self.generated.len() >= self.params.max_tokens =>
            {
                let text = text + &self.stops.flush();
                let reason = match grammar_done {
                    true => FinishReason::Stop,
                    false => FinishReason::Length,
                };
                Ok(self.finish(token, text, logprobs, reason))
            }
            StopOutcome::Continue(text) => {
                let _ = self.events.send(TokenEvent::Token {
                    id: token,
                    text,
                    logprobs,
                });
                Ok(Next::Continue)
            }
        }
    }

    /// Picks the token (within the grammar's mask, if any) and, when asked for, its log
    /// probabilities under the model's own distribution.
    fn sample(
        &mut self,
        logits: &Tensor,
        tokenizer: &GgufTokenizer,
    ) -> Result<(u32, Option<Box<Logprobs>>)> {
        let raw = match self.params.logprobs.is_some() || self.constraint.is_some() {
            true => Some(
                logits
                    .to_dtype(candle_core::DType::F32)
                    .or_execution()?
                    .to_vec1::<f32>()
                    .or_execution()?,
            ),
            false => None,
        };
        let token = match (&mut self.constraint, &raw) {
            (Some(constraint), Some(raw)) => self.sampler.sample_row(constraint.mask(raw)?)?,
            _ => self.sampler.sample(logits)?,
        };
        let logprobs = match (self.params.logprobs, raw) {
            (Some(k), Some(raw)) => {
                let (logprob, top) = top_logprobs(&raw, token, k);
                let entry = |id: u32, logprob: f32| {
                    let bytes = tokenizer.token_bytes(id).to_vec();
                    TokenLogprob {
                        token: String::from_utf8_lossy(&bytes).into_owned(),
                        bytes,
                        logprob,
                    }
                };
                Some(Box::new(Logprobs {
                    sampled: entry(token, logprob),
                    top: top.into_iter().map(|(id, l)| entry(id, l)).collect(),
                }))
            }
            _ => None,
        };
        Ok((token, logprobs))
    }

    fn finish(
        &mut self,
        token: u32,
        text: String,
        logprobs: Option<Box<Logprobs>>,
        reason: FinishReason,
    ) -> Next {
        let _ = self.events.send(TokenEvent::Token {
            id: token,
            text,
            logprobs,
        });
        let _ = self.events.send(TokenEvent::Finished(Completion {
            finish_reason: reason,
            usage: self.usage(),
            timing: self.timing,
        }));
        Next::Finished
    }

    /// Ends the stream with a failure.
    pub fn fail(&self, failure: engine_api::Failure) {
        let _ = self.events.send(TokenEvent::Failed(failure));
    }

    /// Ends the stream with `error`: refused, when the request caused it (its grammar, say),
    /// so that it is the client's 4xx and not the replica's failure; failed otherwise.
    pub fn fail_with(&self, error: &crate::error::EngineError) {
        let event = match engine_api::Refusal::of(error) {
            Some(refusal) => TokenEvent::Refused(refusal),
            None => TokenEvent::Failed(engine_api::Failure::of(error)),
        };
        let _ = self.events.send(event);
    }
}

//! One sequence being generated, as the request core sees it: its tokens, its block table, its
//! place in the schedule, and the channel its events go to. What turns logits into its tokens
//! (sampler, grammar, streaming decoder, stop strings) is its runner's [`ModelRunner::Decoding`],
//! carried here as `decoding` and never looked into.
//!
//! [`ModelRunner::Decoding`]: crate::runner::ModelRunner::Decoding

use policies::{ProjectShare, Share, TenantId};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use engine_api::{
    Completion, EngineError, Failure, FinishReason, Logprobs, RequestTiming, TenantCounters,
    TokenEvent, Usage,
};

use crate::block_pool::{chain_hash, BlockHash, BlockTable};

/// Identifies a submission inside one engine.
pub type SequenceId = u64;

/// Which loaded LoRA adapter a sequence uses: a number its runner gave the adapter when it
/// loaded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdapterSlot(pub u64);

/// The generation state of one request; `D` is its runner's decoding state.
pub struct Sequence<D> {
    /// The engine's id of the request.
    pub id: SequenceId,
    /// Who asked: the fair-share unit.
    pub tenant: TenantId,
    /// The tenant's scheduling terms (weight, class, caps).
    pub share: Share,
    /// Its project inside the tenant's share (`None`: the tenant's sequences are one group).
    pub project_share: Option<ProjectShare>,
    /// The tenant's counters in this engine.
    pub counters: Arc<TenantCounters>,
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// Tokens sampled so far.
    pub generated: Vec<u32>,
    /// KV blocks and the number of positions computed into them.
    pub table: BlockTable,
    /// What its runner keeps to turn logits into its tokens.
    pub decoding: D,
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
    /// The LoRA adapter its projections add, if any (its prefix-cache scope names it too).
    pub adapter: Option<AdapterSlot>,
    /// The keys of its full blocks, as far as computed (tokens never change, so they stay
    /// valid across preemptions).
    block_keys: Vec<BlockHash>,
    /// Blocks of its table registered in the prefix cache (or found there).
    pub registered_blocks: usize,
    /// Prompt tokens found in the prefix cache at its first admission (not computed).
    pub cached_tokens: usize,
}

/// The token a runner sampled for one sequence, and whether the sequence ends with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The token's id.
    pub token: u32,
    /// The text it completes (empty while a character or a possible stop string is incomplete,
    /// and for the end-of-sequence token).
    pub text: String,
    /// Its log probabilities, when asked for.
    pub logprobs: Option<Box<Logprobs>>,
    /// Why the sequence ends with it (end of sequence, a stop string, its grammar complete,
    /// `max_tokens` reached); `None`: it goes on.
    pub finish: Option<FinishReason>,
}

/// What the engine should do with a sequence after a token.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep generating.
    Continue,
    /// The sequence ended (stop, length, or its client left).
    Finished,
}

impl<D> Sequence<D> {
    /// A waiting sequence for a submitted request.
    pub fn new(
        id: SequenceId,
        tenant: TenantId,
        prompt_ids: Vec<u32>,
        decoding: D,
        events: mpsc::UnboundedSender<TokenEvent>,
        submitted_at: Instant,
    ) -> Self {
        Self {
            id,
            tenant,
            share: Share::default(),
            project_share: None,
            counters: Arc::default(),
            prompt_ids,
            generated: Vec::new(),
            table: BlockTable::default(),
            decoding,
            events,
            timing: RequestTiming::default(),
            submitted_at,
            admitted_at: None,
            admission: 0,
            preemptions: 0,
            last_step: 0,
            fork_of: None,
            cache_root: None,
            adapter: None,
            block_keys: Vec::new(),
            registered_blocks: 0,
            cached_tokens: 0,
        }
    }

    /// Its group inside the tenant's share and that group's weight: its project's label, or
    /// (no project) the tenant's own label, weight 1.
    pub fn share_group(&self) -> (&str, f64) {
        match &self.project_share {
            Some(p) => (p.label.as_str(), p.weight),
            None => (self.tenant.as_str(), 1.0),
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

    /// Takes the token its runner sampled: streams it, and its end when it is the last;
    /// says whether generation goes on.
    pub fn accept(&mut self, sampled: Sampled) -> Next {
        if self.generated.is_empty() {
            self.timing.time_to_first_token = self.submitted_at.elapsed();
            if let Some(admitted) = self.admitted_at {
                self.timing.prefill = admitted.elapsed();
            }
        } else {
            self.timing.decode_steps += 1;
        }
        self.generated.push(sampled.token);
        match sampled.finish {
            Some(reason) => self.finish(sampled.token, sampled.text, sampled.logprobs, reason),
            None => {
                let _ = self.events.send(TokenEvent::Token {
                    id: sampled.token,
                    text: sampled.text,
                    logprobs: sampled.logprobs,
                });
                Next::Continue
            }
        }
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

    /// Ends the stream with `error`: refused, when the request caused it (its grammar, say),
    /// so that it is the client's 4xx and not the replica's failure; failed otherwise.
    pub fn fail_with(&self, error: &EngineError) {
        let event = match engine_api::Refusal::of(error) {
            Some(refusal) => TokenEvent::Refused(refusal),
            None => TokenEvent::Failed(Failure::of(error)),
        };
        let _ = self.events.send(event);
    }
}

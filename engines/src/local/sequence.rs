//! One sequence being generated: its cache, sampler, streaming decoder and stop strings, and
//! the rules that turn a sampled token into events for the client.

use std::time::Instant;

use candle_core::Tensor;
use tokio::sync::mpsc;

use crate::engine::{Completion, FinishReason, RequestTiming, TokenEvent, Usage};
use crate::error::Result;
use crate::model::KvCache;
use crate::sampling::{Sampler, SamplingParams};
use crate::text::stop::StopOutcome;
use crate::text::{GgufTokenizer, IncrementalDecoder, StopMatcher};

/// The generation state of one request.
pub struct Sequence {
    pub prompt_ids: Vec<u32>,
    pub generated: Vec<u32>,
    pub cache: KvCache,
    pub params: SamplingParams,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stops: StopMatcher,
    events: mpsc::UnboundedSender<TokenEvent>,
    pub timing: RequestTiming,
    pub submitted_at: Instant,
}

/// What the engine should do with a sequence after a token.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    Finished,
}

impl Sequence {
    pub fn new(
        prompt_ids: Vec<u32>,
        params: SamplingParams,
        cache: KvCache,
        events: mpsc::UnboundedSender<TokenEvent>,
        submitted_at: Instant,
    ) -> Self {
        Self {
            sampler: Sampler::new(&params),
            stops: StopMatcher::new(params.stop.clone()),
            prompt_ids,
            generated: Vec::new(),
            cache,
            params,
            decoder: IncrementalDecoder::new(),
            events,
            timing: RequestTiming::default(),
            submitted_at,
        }
    }

    /// The client dropped its receiver.
    pub fn is_cancelled(&self) -> bool {
        self.events.is_closed()
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_ids.len(),
            completion_tokens: self.generated.len(),
        }
    }

    /// Samples from `logits`, streams the result, and says whether generation goes on.
    pub fn accept_logits(&mut self, logits: &Tensor, tokenizer: &GgufTokenizer) -> Result<Next> {
        let token = self.sampler.sample(logits)?;
        if self.generated.is_empty() {
            self.timing.time_to_first_token = self.submitted_at.elapsed();
        } else {
            self.timing.decode_steps += 1;
        }
        self.generated.push(token);
        let is_eos = !self.params.ignore_eos && tokenizer.eos_ids().contains(&token);
        if is_eos {
            return Ok(self.finish(token, String::new(), FinishReason::Stop));
        }
        let delta = self.decoder.step(tokenizer, token)?.unwrap_or_default();
        match self.stops.push(&delta) {
            StopOutcome::Stopped(text) => Ok(self.finish(token, text, FinishReason::Stop)),
            StopOutcome::Continue(text) if self.generated.len() >= self.params.max_tokens => {
                let text = text + &self.stops.flush();
                Ok(self.finish(token, text, FinishReason::Length))
            }
            StopOutcome::Continue(text) => {
                let _ = self.events.send(TokenEvent::Token { id: token, text });
                Ok(Next::Continue)
            }
        }
    }

    fn finish(&mut self, token: u32, text: String, reason: FinishReason) -> Next {
        let _ = self.events.send(TokenEvent::Token { id: token, text });
        let _ = self.events.send(TokenEvent::Finished(Completion {
            finish_reason: reason,
            usage: self.usage(),
            timing: self.timing,
        }));
        Next::Finished
    }

    /// Ends the stream with an error.
    pub fn fail(&self, message: String) {
        let _ = self.events.send(TokenEvent::Failed(message));
    }
}

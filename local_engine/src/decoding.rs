//! What turns one sequence's logits into its next token and the text it completes: the sampler
//! (penalties, temperature, top-k/top-p), the grammar of structured output, the streaming
//! decoder and the stop strings; and when the sequence ends (end of sequence, a stop string,
//! its grammar complete, `max_tokens`). The request core carries one per sequence and never
//! looks into it.

use candle_core::Tensor;

use engine_api::{FinishReason, Logprobs, SamplingParams, TokenLogprob};
use request_core::Sampled;
use structured_output::ConstraintState;

use crate::error::{OrExecution, Result};
use crate::sampling::{top_logprobs, Sampler};
use crate::text::stop::StopOutcome;
use crate::text::{GgufTokenizer, IncrementalDecoder, StopMatcher};

/// One sequence's decoding state.
pub struct Decoding {
    params: SamplingParams,
    sampler: Sampler,
    /// The grammar the output must follow, if the request has one.
    pub(crate) constraint: Option<ConstraintState>,
    decoder: IncrementalDecoder,
    stops: StopMatcher,
    /// Tokens sampled so far.
    generated: usize,
    /// The LoRA adapter the sequence runs with: held here so it stays loaded until the
    /// sequence ends.
    adapter: Option<std::sync::Arc<models::LoraAdapter>>,
}

impl Decoding {
    /// Keeps `adapter` loaded while this sequence runs.
    pub fn pin(&mut self, adapter: std::sync::Arc<models::LoraAdapter>) {
        self.adapter = Some(adapter);
    }

    /// The state at the start of the output of a request with `params` and prompt `prompt`.
    pub fn new(
        params: SamplingParams,
        prompt: &[u32],
        constraint: Option<ConstraintState>,
    ) -> Self {
        Self {
            sampler: Sampler::new(&params).with_prompt(prompt),
            stops: StopMatcher::new(params.stop.clone()),
            params,
            constraint,
            decoder: IncrementalDecoder::new(),
            generated: 0,
            adapter: None,
        }
    }

    /// Samples from a `[vocab]` row of logits, and says what the token completes and whether
    /// the sequence ends with it.
    pub fn sample(&mut self, logits: &Tensor, tokenizer: &GgufTokenizer) -> Result<Sampled> {
        let (token, logprobs) = self.pick(logits, tokenizer)?;
        self.generated += 1;
        let sampled = |text: String, finish: Option<FinishReason>| Sampled {
            token,
            text,
            logprobs,
            finish,
        };
        if !self.params.ignore_eos && tokenizer.eos_ids().contains(&token) {
            return Ok(sampled(String::new(), Some(FinishReason::Stop)));
        }
        // A grammar that is complete admits nothing but the end: the output ends here.
        let grammar_done = match &mut self.constraint {
            Some(constraint) => constraint.advance(token)?,
            None => false,
        };
        let delta = self.decoder.step(tokenizer, token)?.unwrap_or_default();
        Ok(match self.stops.push(&delta) {
            StopOutcome::Stopped(text) => sampled(text, Some(FinishReason::Stop)),
            StopOutcome::Continue(text)
                if grammar_done || self.generated >= self.params.max_tokens =>
            {
                let reason = match grammar_done {
                    true => FinishReason::Stop,
                    false => FinishReason::Length,
                };
                sampled(text + &self.stops.flush(), Some(reason))
            }
            StopOutcome::Continue(text) => sampled(text, None),
        })
    }

    /// Picks the token (within the grammar's mask, if any) and, when asked for, its log
    /// probabilities under the model's own distribution.
    fn pick(
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
}

//! Sampling parameters and the per-sequence sampler: OpenAI's presence and frequency penalties
//! applied to the logits, then candle's `LogitsProcessor` (greedy, temperature, top-k, top-p);
//! and the log probabilities reported with each token.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};

use crate::constraint::OutputConstraint;
use crate::error::Result;

/// The most alternatives a request may ask log probabilities of (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How to pick tokens and when to stop. Validated by the gateway at the edge.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// Nucleus sampling mass; 1.0 disables it.
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: usize,
    /// Seed of the sampler's random generator; `None` draws one.
    pub seed: Option<u64>,
    /// Maximum number of completion tokens.
    pub max_tokens: usize,
    /// Stop strings: generation ends before the first occurrence, which is not returned.
    pub stop: Vec<String>,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated.
    pub frequency_penalty: f32,
    /// Keep generating past the end-of-sequence token (benchmarks).
    pub ignore_eos: bool,
    /// Report each sampled token's log probability and those of the `k` most likely tokens
    /// (`Some(0)`: the sampled token's only); at most [`MAX_TOP_LOGPROBS`].
    pub logprobs: Option<usize>,
    /// What the output must match (structured output, forced tool calls).
    pub constraint: Option<Arc<OutputConstraint>>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            max_tokens: 16,
            stop: Vec::new(),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            ignore_eos: false,
            logprobs: None,
            constraint: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }

    fn sampling(&self) -> Sampling {
        let temperature = self.temperature;
        let top_p = (self.top_p < 1.0).then_some(self.top_p);
        let top_k = (self.top_k > 0).then_some(self.top_k);
        match (temperature <= 0.0, top_k, top_p) {
            (true, _, _) => Sampling::ArgMax,
            (false, None, None) => Sampling::All { temperature },
            (false, Some(k), None) => Sampling::TopK { k, temperature },
            (false, None, Some(p)) => Sampling::TopP { p, temperature },
            (false, Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
        }
    }
}

/// Samples the tokens of one sequence.
pub struct Sampler {
    processor: LogitsProcessor,
    presence_penalty: f32,
    frequency_penalty: f32,
    /// How often each token was generated so far (penalties apply to generated tokens, as in
    /// OpenAI's and vLLM's definition).
    counts: HashMap<u32, u32>,
}

impl Sampler {
    /// A sampler for `params` (seeded when they name a seed).
    pub fn new(params: &SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(rand::random);
        Self {
            processor: LogitsProcessor::from_sampling(seed, params.sampling()),
            presence_penalty: params.presence_penalty,
            frequency_penalty: params.frequency_penalty,
            counts: HashMap::new(),
        }
    }

    /// Picks the next token from a `[vocab]` row of logits.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        if self.presence_penalty == 0.0 && self.frequency_penalty == 0.0 {
            let token = self.processor.sample(logits)?;
            *self.counts.entry(token).or_insert(0) += 1;
            return Ok(token);
        }
        self.sample_row(logits.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
    }

    /// Picks the next token from logits already copied to the host (and perhaps masked).
    pub fn sample_row(&mut self, mut row: Vec<f32>) -> Result<u32> {
        // Penalties act on logits (before temperature and softmax), as OpenAI defines them.
        apply_penalties(
            &mut row,
            &self.counts,
            self.presence_penalty,
            self.frequency_penalty,
        );
        let len = row.len();
        let row = Tensor::from_vec(row, len, &candle_core::Device::Cpu)?;
        let token = self.processor.sample(&row)?;
        *self.counts.entry(token).or_insert(0) += 1;
        Ok(token)
    }
}

/// The log probability of `chosen` under `logits` (a log-softmax), and the `k` most likely
/// tokens with theirs, most likely first (ties: the lower id first).
pub fn top_logprobs(logits: &[f32], chosen: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let log_norm = max + sum.ln() as f32;
    // One pass keeping the best k in order: k is at most 20, the vocabulary tens of thousands.
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (id, &x) in logits.iter().enumerate() {
            if best.len() == k && x <= best[k - 1].1 {
                continue;
            }
            let at = best.partition_point(|&(_, y)| y >= x);
            best.insert(at, (id as u32, x));
            best.truncate(k);
        }
    }
    let chosen = logits
        .get(chosen as usize)
        .map_or(f32::NEG_INFINITY, |&x| x - log_norm);
    let top = best.into_iter().map(|(id, x)| (id, x - log_norm)).collect();
    (chosen, top)
}

fn apply_penalties(logits: &mut [f32], counts: &HashMap<u32, u32>, presence: f32, frequency: f32) {
    for (&token, &count) in counts {
        if let Some(logit) = logits.get_mut(token as usize) {
            *logit -= presence + frequency * count as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn logits(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    #[test]
    fn top_logprobs_are_a_log_softmax_in_order() {
        let row = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let (chosen, top) = top_logprobs(&row, 2, 3);
        let norm: f32 = row.iter().map(|x| x.exp()).sum::<f32>().ln();
        assert!((chosen - (2.0 - norm)).abs() < 1e-5);
        let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 2], "highest first, ties by id");
        assert!((top[0].1 - (3.0 - norm)).abs() < 1e-5);
        let total: f32 = row.iter().map(|x| (x - norm).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert!(top_logprobs(&row, 0, 0).1.is_empty());
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(&SamplingParams::greedy(4));
        assert_eq!(s.sample(&logits(&[0.1, 3.0, 0.2])).unwrap(), 1);
    }

    #[test]
    fn frequency_penalty_moves_greedy_off_a_repeated_token() {
        let params = SamplingParams {
            frequency_penalty: 1.0,
            ..SamplingParams::greedy(4)
        };
        let mut s = Sampler::new(&params);
        let l = logits(&[2.5, 3.0, 0.0]);
        assert_eq!(s.sample(&l).unwrap(), 1); // 3.0 beats 2.5
        assert_eq!(s.sample(&l).unwrap(), 0); // 3.0 - 1.0 < 2.5
    }

    #[test]
    fn presence_penalty_applies_once_per_seen_token() {
        let mut row = vec![1.0, 1.0, 1.0];
        let counts = HashMap::from([(0u32, 3u32), (2, 1)]);
        apply_penalties(&mut row, &counts, 0.5, 0.0);
        assert_eq!(row, vec![0.5, 1.0, 0.5]);
    }

    #[test]
    fn same_seed_same_samples() {
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            ..SamplingParams::default()
        };
        let l = logits(&[1.0, 1.1, 0.9, 1.05, 0.95]);
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p);
            (0..32).map(|_| s.sample(&l).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draw(&params), draw(&params));
        let other = SamplingParams {
            seed: Some(8),
            ..params.clone()
        };
        assert_ne!(draw(&params), draw(&other));
    }

    #[test]
    fn top_k_one_is_greedy_even_when_hot() {
        let params = SamplingParams {
            temperature: 5.0,
            top_k: 1,
            seed: Some(1),
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(&params);
        for _ in 0..16 {
            assert_eq!(s.sample(&logits(&[0.0, 0.5, 0.4])).unwrap(), 1);
        }
    }
}

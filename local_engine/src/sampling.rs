//! Sampling parameters and the per-sequence sampler: OpenAI's presence and frequency penalties
//! and the repetition penalty applied to the logits, then candle's `LogitsProcessor` (greedy,
//! temperature, top-k, top-p); a model's default sampling settings; and the log probabilities
//! reported with each token.

use std::collections::{HashMap, HashSet};

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};

use crate::error::OrExecution;
use crate::error::Result;
use candle_core::quantized::gguf_file;
use engine_api::{SamplingDefaults, SamplingParams};

fn sampling_of(params: &SamplingParams) -> Sampling {
    let temperature = params.temperature;
    let top_p = (params.top_p < 1.0).then_some(params.top_p);
    let top_k = (params.top_k > 0).then_some(params.top_k);
    match (temperature <= 0.0, top_k, top_p) {
        (true, _, _) => Sampling::ArgMax,
        (false, None, None) => Sampling::All { temperature },
        (false, Some(k), None) => Sampling::TopK { k, temperature },
        (false, None, Some(p)) => Sampling::TopP { p, temperature },
        (false, Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
    }
}

/// The sampling recommendation a GGUF file carries in `general.sampling.*`.
pub fn defaults_from_gguf(metadata: &HashMap<String, gguf_file::Value>) -> SamplingDefaults {
    SamplingDefaults::recommended(|key| {
        use gguf_file::Value;
        match metadata.get(&format!("general.sampling.{key}"))? {
            Value::F32(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            Value::I32(v) => Some(*v as f64),
            Value::U32(v) => Some(*v as f64),
            Value::I64(v) => Some(*v as f64),
            Value::U64(v) => Some(*v as f64),
            _ => None,
        }
    })
}

/// Samples the tokens of one sequence.
pub struct Sampler {
    processor: LogitsProcessor,
    presence_penalty: f32,
    frequency_penalty: f32,
    repetition_penalty: f32,
    /// How often each token was generated so far (presence and frequency penalties apply to
    /// generated tokens, as in OpenAI's and vLLM's definition).
    counts: HashMap<u32, u32>,
    /// The prompt's tokens, when the repetition penalty is on (it applies to them too).
    prompt: HashSet<u32>,
}

impl Sampler {
    /// A sampler for `params` (seeded when they name a seed).
    pub fn new(params: &SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(rand::random);
        Self {
            processor: LogitsProcessor::from_sampling(seed, sampling_of(params)),
            presence_penalty: params.presence_penalty,
            frequency_penalty: params.frequency_penalty,
            repetition_penalty: params.repetition_penalty,
            counts: HashMap::new(),
            prompt: HashSet::new(),
        }
    }

    /// The sequence's prompt, which the repetition penalty counts as seen.
    pub fn with_prompt(mut self, prompt: &[u32]) -> Self {
        if self.repetition_penalty != 1.0 {
            self.prompt = prompt.iter().copied().collect();
        }
        self
    }

    fn penalised(&self) -> bool {
        self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || self.repetition_penalty != 1.0
    }

    /// Picks the next token from a `[vocab]` row of logits.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        if !self.penalised() {
            let token = self.processor.sample(logits).or_execution()?;
            *self.counts.entry(token).or_insert(0) += 1;
            return Ok(token);
        }
        self.sample_row(
            logits
                .to_dtype(candle_core::DType::F32)
                .or_execution()?
                .to_vec1::<f32>()
                .or_execution()?,
        )
    }

    /// Picks the next token from logits already copied to the host (and perhaps masked).
    pub fn sample_row(&mut self, mut row: Vec<f32>) -> Result<u32> {
        // Penalties act on logits (before temperature and softmax), as OpenAI defines them.
        if self.repetition_penalty != 1.0 {
            let penalty = self.repetition_penalty;
            let generated_only = self.counts.keys().filter(|t| !self.prompt.contains(t));
            for &token in self.prompt.iter().chain(generated_only) {
                if let Some(logit) = row.get_mut(token as usize) {
                    *logit = match *logit > 0.0 {
                        true => *logit / penalty,
                        false => *logit * penalty,
                    };
                }
            }
        }
        apply_penalties(
            &mut row,
            &self.counts,
            self.presence_penalty,
            self.frequency_penalty,
        );
        let len = row.len();
        let row = Tensor::from_vec(row, len, &candle_core::Device::Cpu).or_execution()?;
        let token = self.processor.sample(&row).or_execution()?;
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
    fn repetition_penalty_divides_seen_positive_logits_and_multiplies_negative_ones() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy(4)
        };
        // Token 0 is in the prompt: 3.0 / 2 = 1.5 loses to token 1's 2.0.
        let mut s = Sampler::new(&params).with_prompt(&[0]);
        assert_eq!(s.sample(&logits(&[3.0, 2.0, -1.0])).unwrap(), 1);
        // Token 1 now generated too: 2.0 / 2 = 1.0 loses to unseen token 2's 1.1.
        assert_eq!(s.sample(&logits(&[1.8, 2.0, 1.1])).unwrap(), 2);
        // Seen negative logits get more negative: -0.5 * 2 = -1.0 < -0.8.
        let mut s = Sampler::new(&params).with_prompt(&[0]);
        assert_eq!(s.sample(&logits(&[-0.5, -0.8, -3.0])).unwrap(), 1);
        // Off at 1.0: the prompt is not even kept.
        let s = Sampler::new(&SamplingParams::greedy(1)).with_prompt(&[0, 1]);
        assert!(s.prompt.is_empty());
    }

    #[test]
    fn defaults_from_a_gguf_keep_only_usable_values_and_yield_to_the_operators() {
        use candle_core::quantized::gguf_file::Value;
        let metadata = HashMap::from([
            ("general.sampling.temp".to_string(), Value::F32(0.6)),
            ("general.sampling.top_p".to_string(), Value::F32(0.95)),
            ("general.sampling.top_k".to_string(), Value::I32(20)),
            (
                "general.sampling.penalty_repeat".to_string(),
                Value::F32(9.0),
            ),
        ]);
        let gguf = defaults_from_gguf(&metadata);
        assert!((gguf.temperature.unwrap() - 0.6).abs() < 1e-6);
        assert_eq!(gguf.top_k, Some(20));
        assert_eq!(gguf.repetition_penalty, None, "9.0 is out of range");
        let operator = SamplingDefaults {
            temperature: Some(0.2),
            ..SamplingDefaults::default()
        };
        let merged = operator.or(gguf);
        assert_eq!(merged.temperature, Some(0.2));
        assert!((merged.top_p.unwrap() - 0.95).abs() < 1e-6);
        assert_eq!(merged.out_of_range(), None);
        let hot = SamplingDefaults {
            temperature: Some(2.5),
            ..SamplingDefaults::default()
        };
        assert_eq!(
            hot.out_of_range().map(|(name, _)| name),
            Some("temperature")
        );
        let zero_top_p = SamplingDefaults {
            top_p: Some(0.0),
            ..SamplingDefaults::default()
        };
        assert_eq!(
            zero_top_p.out_of_range().map(|(name, _)| name),
            Some("top_p")
        );
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

//! Sampling parameters and the per-sequence sampler: OpenAI's presence and frequency penalties
//! and the repetition penalty applied to the logits, then candle's `LogitsProcessor` (greedy,
//! temperature, top-k, top-p); a model's default sampling settings; and the log probabilities
//! reported with each token.

use std::collections::{HashMap, HashSet};
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
    /// The multiplicative penalty of every token in the prompt or generated so far (as Hugging
    /// Face's and vLLM's `repetition_penalty`): a positive logit is divided by it, a negative
    /// one multiplied. 1.0 disables it.
    pub repetition_penalty: f32,
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
            repetition_penalty: 1.0,
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

/// What a model applies to requests that leave a sampling setting out (as vLLM applies a model's
/// generation config): the operator's `[models.defaults]` first, then the GGUF's
/// `general.sampling.*` keys, then OpenAI's defaults. `None`: not set at this level.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingDefaults {
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// `top_k` (0 disables it).
    pub top_k: Option<usize>,
    /// `presence_penalty`.
    pub presence_penalty: Option<f32>,
    /// `frequency_penalty`.
    pub frequency_penalty: Option<f32>,
    /// `repetition_penalty`.
    pub repetition_penalty: Option<f32>,
}

/// The values a sampling setting takes in the API (the gateway checks requests by the same).
#[derive(Debug, Clone, Copy)]
struct SettingRange {
    low: f64,
    high: f64,
    /// Whether `low` itself is allowed (not for `top_p` and `repetition_penalty`).
    low_included: bool,
    /// The range in words, for errors.
    says: &'static str,
}

impl SettingRange {
    fn admits(&self, value: f64) -> bool {
        value.is_finite()
            && value <= self.high
            && (value > self.low || self.low_included && value == self.low)
    }
}

const TEMPERATURE: SettingRange = SettingRange {
    low: 0.0,
    high: 2.0,
    low_included: true,
    says: "between 0 and 2",
};
const TOP_P: SettingRange = SettingRange {
    low: 0.0,
    high: 1.0,
    low_included: false,
    says: "above 0 and at most 1",
};
const PENALTY: SettingRange = SettingRange {
    low: -2.0,
    high: 2.0,
    low_included: true,
    says: "between -2 and 2",
};
const REPETITION_PENALTY: SettingRange = SettingRange {
    low: 0.0,
    high: 2.0,
    low_included: false,
    says: "above 0 and at most 2",
};

impl SamplingDefaults {
    /// The first setting out of the API's range, as `(name, the range)`.
    pub fn out_of_range(&self) -> Option<(&'static str, &'static str)> {
        let f = |v: Option<f32>| v.map(f64::from);
        [
            ("temperature", self.temperature, TEMPERATURE),
            ("top_p", self.top_p, TOP_P),
            ("presence_penalty", f(self.presence_penalty), PENALTY),
            ("frequency_penalty", f(self.frequency_penalty), PENALTY),
            (
                "repetition_penalty",
                f(self.repetition_penalty),
                REPETITION_PENALTY,
            ),
        ]
        .into_iter()
        .find(|(_, value, range)| value.is_some_and(|v| !range.admits(v)))
        .map(|(name, _, range)| (name, range.says))
    }

    /// These settings, and `fallback`'s where these have none.
    pub fn or(self, fallback: SamplingDefaults) -> SamplingDefaults {
        SamplingDefaults {
            temperature: self.temperature.or(fallback.temperature),
            top_p: self.top_p.or(fallback.top_p),
            top_k: self.top_k.or(fallback.top_k),
            presence_penalty: self.presence_penalty.or(fallback.presence_penalty),
            frequency_penalty: self.frequency_penalty.or(fallback.frequency_penalty),
            repetition_penalty: self.repetition_penalty.or(fallback.repetition_penalty),
        }
    }

    /// The recommendation a GGUF file carries in `general.sampling.*` (llama.cpp's keys:
    /// `temp`, `top_p`, `top_k`, `penalty_repeat`), keeping only values in the API's ranges.
    pub fn from_gguf(metadata: &HashMap<String, candle_core::quantized::gguf_file::Value>) -> Self {
        let number = |key: &str| -> Option<f64> {
            use candle_core::quantized::gguf_file::Value;
            match metadata.get(&format!("general.sampling.{key}"))? {
                Value::F32(v) => Some(*v as f64),
                Value::F64(v) => Some(*v),
                Value::I32(v) => Some(*v as f64),
                Value::U32(v) => Some(*v as f64),
                Value::I64(v) => Some(*v as f64),
                Value::U64(v) => Some(*v as f64),
                _ => None,
            }
        };
        SamplingDefaults {
            temperature: number("temp").filter(|&v| TEMPERATURE.admits(v)),
            top_p: number("top_p").filter(|&v| TOP_P.admits(v)),
            top_k: number("top_k")
                .filter(|v| (0.0..=1e6).contains(v))
                .map(|v| v as usize),
            presence_penalty: None,
            frequency_penalty: None,
            repetition_penalty: number("penalty_repeat")
                .filter(|&v| REPETITION_PENALTY.admits(v))
                .map(|v| v as f32),
        }
    }
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
            processor: LogitsProcessor::from_sampling(seed, params.sampling()),
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
            let token = self.processor.sample(logits)?;
            *self.counts.entry(token).or_insert(0) += 1;
            return Ok(token);
        }
        self.sample_row(logits.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
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
        let gguf = SamplingDefaults::from_gguf(&metadata);
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

//! How to pick tokens and when to stop ([`SamplingParams`]), what the output must match
//! ([`OutputConstraint`]), and a model's defaults for settings a request leaves out.

use std::sync::Arc;

use serde_json::Value;

/// What a request's output must be.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputConstraint {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid against this JSON Schema (`{"type": "json_schema", ...}`, and the arguments
    /// of forced tool calls).
    JsonSchema(Value),
}

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

    /// A model's recommendation (llama.cpp's `general.sampling.*` keys of a GGUF file: `temp`,
    /// `top_p`, `top_k`, `penalty_repeat`), read through `number`, keeping only values in the
    /// API's ranges.
    pub fn recommended(number: impl Fn(&str) -> Option<f64>) -> Self {
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

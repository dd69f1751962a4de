//! The scenario file (TOML), documented in `docs/loadtest.md`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
/// A load test: what to request, from which tenants, how, until when.
pub struct Scenario {
    /// Model id to request.
    pub model: String,
    /// `chat` or `completions`.
    #[serde(default)]
    pub endpoint: Endpoint,
    #[serde(default = "yes")]
    /// Stream the answers (SSE; default true): TTFT and ITL need it.
    pub stream: bool,
    /// Ask the server to ignore end-of-sequence (vLLM's and this gateway's extension).
    #[serde(default)]
    pub ignore_eos: bool,
    /// Sampling temperature sent with every request (0 = greedy); the server's default if
    /// absent.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// When the run ends: whichever comes first (at least one is required).
    pub stop: StopRule,
    /// Seed of every random choice (arrivals, prompt lengths), for reproducible schedules.
    #[serde(default)]
    pub seed: u64,
    /// Service-level objectives for goodput.
    #[serde(default)]
    pub slo: Slo,
    /// The tenants, each with its own key and load.
    pub tenants: Vec<TenantLoad>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
/// The OpenAI endpoint driven.
pub enum Endpoint {
    #[default]
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
/// When the run stops: whichever comes first.
pub struct StopRule {
    /// After this many seconds.
    pub duration_secs: Option<f64>,
    /// After this many requests sent.
    pub requests: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
/// Service-level objectives: a request meets them when every one given holds.
pub struct Slo {
    /// Time to first token, ms.
    pub ttft_ms: Option<f64>,
    /// Time per output token, ms.
    pub tpot_ms: Option<f64>,
    /// End-to-end latency, ms.
    pub e2el_ms: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
/// One tenant's load.
pub struct TenantLoad {
    /// Its name in reports.
    pub label: String,
    /// The API key, or `env:NAME` to read it from the environment.
    pub api_key: String,
    /// When its requests are sent.
    pub arrival: Arrival,
    /// What they ask.
    pub prompts: Prompts,
    /// Their `max_tokens`.
    pub max_tokens: Distribution,
    /// The model it requests (default: the scenario's `model`): e.g. each tenant its own LoRA
    /// adapter over one base model.
    #[serde(default)]
    pub model: Option<String>,
    /// Fields added to each of its requests' JSON body, over the harness's own (a server's
    /// extensions, such as llama.cpp's per-request `lora`).
    #[serde(default)]
    pub extra_body: serde_json::Map<String, serde_json::Value>,
}

/// How requests arrive.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Arrival {
    /// Exponential gaps at `rate` requests per second (open loop).
    Poisson {
        /// Requests per second.
        rate: f64,
    },
    /// Evenly spaced at `rate` requests per second (open loop).
    Constant {
        /// Requests per second.
        rate: f64,
    },
    /// `size` requests at once every `every_secs` (open loop).
    Bursts {
        /// Requests per burst.
        size: u64,
        /// Seconds between bursts.
        every_secs: f64,
    },
    /// `concurrency` clients, each sending its next request when the last one ends.
    ClosedLoop {
        /// Clients.
        concurrency: u64,
    },
}

/// Where prompts come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Prompts {
    /// Built-in text of about `tokens` tokens (one common word is about one token).
    Synthetic {
        /// Prompt length in tokens.
        tokens: Distribution,
    },
    /// One prompt per line: `{"prompt": "..."}`, used in order, cycling.
    Jsonl {
        /// The file.
        path: PathBuf,
    },
    /// One system prompt of `system_tokens` tokens, the same for every request (of every
    /// client and run), then a synthetic question of `tokens`: a prefix cache's best case.
    SharedPrefix {
        /// System prompt length in tokens.
        system_tokens: u64,
        /// Question length in tokens.
        tokens: Distribution,
    },
    /// Conversations of `turns` questions (closed loop only): each request sends the system
    /// prompt, every earlier question and the answer the server gave it, and a new question.
    MultiTurn {
        /// System prompt length in tokens (0: none but an empty one).
        system_tokens: u64,
        /// Each question's length in tokens.
        tokens: Distribution,
        /// Questions per conversation.
        turns: u64,
    },
}

/// A fixed number or a uniform range.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Distribution {
    /// Always this value.
    Fixed(u64),
    /// Uniform over `min..=max`.
    Uniform {
        /// Smallest value.
        min: u64,
        /// Largest value.
        max: u64,
    },
}

impl Distribution {
    /// One value.
    pub fn sample(&self, rng: &mut impl rand::Rng) -> u64 {
        match self {
            Self::Fixed(n) => *n,
            Self::Uniform { min, max } => rng.gen_range(*min..=(*max).max(*min)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
/// Why a scenario cannot be used.
pub enum ScenarioError {
    #[error("cannot read {0}: {1}")]
    /// The file could not be read.
    Read(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    /// The file is not a valid scenario.
    Parse(PathBuf, toml::de::Error),
    #[error("{0}")]
    /// The scenario is inconsistent.
    Invalid(String),
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ScenarioError::Read(path.into(), e))?;
        let mut scenario: Self =
            toml::from_str(&text).map_err(|e| ScenarioError::Parse(path.into(), e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for tenant in &mut scenario.tenants {
            if let Prompts::Jsonl { path } = &mut tenant.prompts {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks what parsing cannot (rates, counts, ranges).
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |m: String| Err(ScenarioError::Invalid(m));
        if self.stop.duration_secs.is_none() && self.stop.requests.is_none() {
            return invalid(
                "`stop` needs `duration_secs` and/or `requests`: every run must end by itself"
                    .into(),
            );
        }
        if self.tenants.is_empty() {
            return invalid("the scenario has no tenants".into());
        }
        for t in &self.tenants {
            let ok = match t.arrival {
                Arrival::Poisson { rate } | Arrival::Constant { rate } => {
                    rate > 0.0 && rate.is_finite()
                }
                Arrival::Bursts { size, every_secs } => size > 0 && every_secs > 0.0,
                Arrival::ClosedLoop { concurrency } => concurrency > 0,
            };
            if !ok {
                return invalid(format!(
                    "tenant `{}`: arrival parameters must be positive",
                    t.label
                ));
            }
            if let Prompts::MultiTurn { turns, .. } = t.prompts {
                if !matches!(t.arrival, Arrival::ClosedLoop { .. }) || turns == 0 {
                    return invalid(format!(
                        "tenant `{}`: `multi_turn` prompts need a `closed_loop` arrival (each client holds its conversation) and `turns` of at least 1",
                        t.label
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 2);
    }

    #[test]
    fn a_run_must_end_by_itself() {
        let text = r#"
            model = "m"
            stop = {}
            [[tenants]]
            label = "a"
            api_key = "k"
            arrival = { kind = "poisson", rate = 1.0 }
            prompts = { kind = "synthetic", tokens = 20 }
            max_tokens = { min = 1, max = 5 }
        "#;
        let s: Scenario = toml::from_str(text).unwrap();
        assert_eq!(
            s.tenants[0].max_tokens,
            Distribution::Uniform { min: 1, max: 5 }
        );
        assert!(s.validate().is_err());
    }

    #[test]
    fn a_tenant_may_name_its_own_model_and_extra_body() {
        let text = r#"
            model = "base"
            stop = { requests = 1 }
            [[tenants]]
            label = "a"
            api_key = "k"
            model = "base:radiology"
            extra_body = { lora = [{ id = 0, scale = 1.0 }] }
            arrival = { kind = "closed_loop", concurrency = 1 }
            prompts = { kind = "synthetic", tokens = 20 }
            max_tokens = 5
        "#;
        let s: Scenario = toml::from_str(text).unwrap();
        let t = &s.tenants[0];
        assert_eq!(t.model.as_deref(), Some("base:radiology"));
        assert_eq!(
            serde_json::Value::Object(t.extra_body.clone()),
            serde_json::json!({"lora": [{"id": 0, "scale": 1.0}]})
        );
    }
}

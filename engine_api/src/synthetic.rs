//! A benchmark tool, not a model: the `synthetic` engine streams a configured number of tokens
//! at a configured rate without running anything, so that the gateway's own overhead (HTTP,
//! auth, quotas, SSE framing, accounting) can be measured apart from model time. It is never the
//! default and its output is meaningless text.
//!
//! Requests run as tasks on the engine's own single-threaded tokio runtime (on a thread of its
//! own, as a real engine has), so pacing timers do not compete with the gateway's workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::error::{EngineError, Result};
use crate::{
    Completion, Engine, EngineCounters, FinishReason, GenerationRequest, ModelInfo, PreparedPrompt,
    Prompt, RequestTiming, TokenEvent, TokenStream, Usage,
};

/// How the synthetic engine behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticOptions {
    /// Tokens per second of each stream; 0: as fast as the channel takes them.
    pub tokens_per_second: f64,
    /// Tokens generated per request (capped by its `max_tokens`); `None`: exactly `max_tokens`.
    pub output_tokens: Option<usize>,
    /// Context window that requests are validated against.
    pub context_length: usize,
    /// Vocabulary size (token ids are checked against it).
    pub vocab_size: usize,
}

impl Default for SyntheticOptions {
    fn default() -> Self {
        Self {
            tokens_per_second: 0.0,
            output_tokens: None,
            context_length: 8192,
            vocab_size: 49152,
        }
    }
}

struct Job {
    output_tokens: usize,
    max_tokens: usize,
    prompt_tokens: usize,
    submitted: Instant,
    sender: mpsc::UnboundedSender<TokenEvent>,
}

/// See the module documentation.
pub struct SyntheticEngine {
    info: ModelInfo,
    options: SyntheticOptions,
    counters: Arc<EngineCounters>,
    next_id: AtomicU64,
    jobs: mpsc::UnboundedSender<Job>,
}

impl SyntheticEngine {
    /// Starts the engine's pacing thread for model `id`.
    pub fn start(id: &str, options: SyntheticOptions) -> Result<Self> {
        if !(options.tokens_per_second >= 0.0 && options.tokens_per_second.is_finite()) {
            return Err(EngineError::Load(format!(
                "synthetic engine: tokens_per_second must be a finite number >= 0, not {}",
                options.tokens_per_second
            )));
        }
        let counters = Arc::new(EngineCounters::default());
        let (jobs, mut incoming) = mpsc::unbounded_channel::<Job>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| EngineError::Load(format!("synthetic engine runtime: {e}")))?;
        let interval = (options.tokens_per_second > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / options.tokens_per_second));
        let task_counters = counters.clone();
        std::thread::Builder::new()
            .name(format!("synthetic-{id}"))
            .spawn(move || {
                runtime.block_on(async move {
                    // Ends when the engine (the only sender) is dropped.
                    while let Some(job) = incoming.recv().await {
                        tokio::spawn(stream_tokens(job, interval, task_counters.clone()));
                    }
                });
            })
            .map_err(|e| EngineError::Load(format!("synthetic engine thread: {e}")))?;
        Ok(Self {
            info: ModelInfo {
                id: id.to_string(),
                context_length: options.context_length,
                vocab_size: options.vocab_size,
                sampling_defaults: Default::default(),
                file: Default::default(),
            },
            options,
            counters,
            next_id: AtomicU64::new(0),
            jobs,
        })
    }

    /// A stand-in token id for a word: stable, inside the vocabulary.
    fn word_id(&self, word: &str) -> u32 {
        let hash = word.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        (hash % self.info.vocab_size as u64) as u32
    }
}

async fn stream_tokens(job: Job, interval: Option<Duration>, counters: Arc<EngineCounters>) {
    counters.running.fetch_add(1, Ordering::Relaxed);
    let start = tokio::time::Instant::now();
    let mut first_token = None;
    let mut sent = 0;
    let mut cancelled = false;
    while sent < job.output_tokens {
        if let Some(interval) = interval {
            let due = start + interval * (sent as u32 + 1);
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                // The client went away: free the stream at once, not at the next token.
                _ = job.sender.closed() => { cancelled = true; break; }
            }
        }
        let event = TokenEvent::Token {
            id: (sent % 1000) as u32,
            text: " token".to_string(),
            logprobs: None,
        };
        counters.generated_tokens.fetch_add(1, Ordering::Relaxed);
        if job.sender.send(event).is_err() {
            counters.generated_tokens.fetch_sub(1, Ordering::Relaxed);
            cancelled = true;
            break;
        }
        first_token.get_or_insert_with(|| job.submitted.elapsed());
        sent += 1;
        if interval.is_none() && sent % 64 == 0 {
            tokio::task::yield_now().await; // unpaced: let other streams run
        }
    }
    if cancelled {
        counters.cancelled.fetch_add(1, Ordering::Relaxed);
    } else {
        let completion = Completion {
            finish_reason: if sent == job.max_tokens {
                FinishReason::Length
            } else {
                FinishReason::Stop
            },
            usage: Usage {
                prompt_tokens: job.prompt_tokens,
                completion_tokens: sent,
                cached_tokens: 0,
                prompt_estimated: false,
            },
            timing: RequestTiming {
                queue: Duration::ZERO,
                prefill: Duration::ZERO,
                time_to_first_token: first_token.unwrap_or_default(),
                decode_steps: sent.saturating_sub(1),
            },
        };
        // Counted before the event goes out: a client that sees the end also sees the count.
        counters.finished.fetch_add(1, Ordering::Relaxed);
        let _ = job.sender.send(TokenEvent::Finished(completion));
    }
    counters.running.fetch_sub(1, Ordering::Relaxed);
    counters.active.fetch_sub(1, Ordering::Relaxed);
}

impl SyntheticEngine {
    /// One token per whitespace-separated word, plus four per chat message for the template's
    /// framing: cheap, deterministic, and roughly the size a real tokenizer gives English.
    pub fn prompt_token_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        Ok(match prompt {
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::Text(text) => text.split_whitespace().map(|w| self.word_id(w)).collect(),
            chat => chat
                .plain_messages()
                .unwrap_or_default()
                .iter()
                .flat_map(|m| {
                    let framing = [self.word_id(&m.role); 4];
                    framing
                        .into_iter()
                        .chain(m.content.split_whitespace().map(|w| self.word_id(w)))
                })
                .collect(),
        })
    }
}

impl Engine for SyntheticEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn submit(&self, request: GenerationRequest) -> Result<TokenStream> {
        let prompt_tokens = match &request.prompt {
            Prompt::Tokens(ids) => ids.len(),
            prompt => self.prompt_token_ids(prompt)?.len(),
        };
        if let Prompt::Tokens(ids) = &request.prompt {
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.info.vocab_size) {
                return Err(EngineError::InvalidTokenId(bad));
            }
        }
        if prompt_tokens == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        let max_tokens = request.params.max_tokens;
        if prompt_tokens + max_tokens > self.info.context_length {
            return Err(EngineError::ContextLengthExceeded {
                context_length: self.info.context_length,
                prompt_tokens,
                max_tokens,
            });
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        let job = Job {
            output_tokens: self
                .options
                .output_tokens
                .unwrap_or(max_tokens)
                .min(max_tokens),
            max_tokens,
            prompt_tokens,
            submitted: Instant::now(),
            sender,
        };
        self.counters.active.fetch_add(1, Ordering::Relaxed);
        if self.jobs.send(job).is_err() {
            self.counters.active.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::EngineStopped);
        }
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        self.counters
            .prompt_tokens
            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(TokenStream::new(id, prompt_tokens, receiver))
    }

    fn prepare_prompt(&self, prompt: &Prompt) -> Result<PreparedPrompt> {
        Ok(PreparedPrompt::tokenized(self.prompt_token_ids(prompt)?))
    }

    fn counters(&self) -> &EngineCounters {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SamplingParams;

    fn request(max_tokens: usize) -> GenerationRequest {
        GenerationRequest::new(
            Prompt::Text("one two three".into()),
            SamplingParams::greedy(max_tokens),
            "t".parse().unwrap(),
        )
    }

    #[test]
    fn streams_the_configured_number_of_tokens() {
        let engine = SyntheticEngine::start(
            "s",
            SyntheticOptions {
                output_tokens: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
        let out = engine
            .submit(request(16))
            .unwrap()
            .blocking_collect()
            .unwrap();
        assert_eq!(out.token_ids.len(), 5);
        assert_eq!(out.completion.finish_reason, FinishReason::Stop);
        assert_eq!(out.completion.usage.prompt_tokens, 3);
        assert_eq!(out.completion.usage.completion_tokens, 5);
        // max_tokens caps the configured count, and ends with `length`.
        let out = engine
            .submit(request(2))
            .unwrap()
            .blocking_collect()
            .unwrap();
        assert_eq!(out.token_ids.len(), 2);
        assert_eq!(out.completion.finish_reason, FinishReason::Length);
        assert_eq!(EngineCounters::get(&engine.counters().finished), 2);
        assert_eq!(EngineCounters::get(&engine.counters().generated_tokens), 7);
    }

    #[test]
    fn paces_tokens_at_the_configured_rate() {
        // 10 tokens at 200/s take at least 45 ms (the timer never fires early); unpaced they take
        // far less. Compared as a ratio in one run, not as an absolute time.
        let paced = SyntheticEngine::start(
            "p",
            SyntheticOptions {
                tokens_per_second: 200.0,
                ..Default::default()
            },
        )
        .unwrap();
        let unpaced = SyntheticEngine::start("u", SyntheticOptions::default()).unwrap();
        let time = |engine: &SyntheticEngine| {
            let start = Instant::now();
            engine
                .submit(request(10))
                .unwrap()
                .blocking_collect()
                .unwrap();
            start.elapsed()
        };
        let (slow, fast) = (time(&paced), time(&unpaced));
        assert!(slow >= Duration::from_millis(45), "{slow:?}");
        assert!(slow > fast * 5, "paced {slow:?} vs unpaced {fast:?}");
    }

    #[test]
    fn dropping_the_stream_cancels_and_frees_it() {
        let engine = SyntheticEngine::start(
            "c",
            SyntheticOptions {
                tokens_per_second: 50.0,
                ..Default::default()
            },
        )
        .unwrap();
        let mut stream = engine.submit(request(1000)).unwrap();
        assert!(matches!(
            stream.blocking_next(),
            Some(TokenEvent::Token { .. })
        ));
        drop(stream);
        let counters = engine.counters();
        for _ in 0..200 {
            if EngineCounters::get(&counters.cancelled) == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(EngineCounters::get(&counters.cancelled), 1);
        assert_eq!(EngineCounters::get(&counters.active), 0);
    }

    #[test]
    fn validates_like_a_model() {
        let engine = SyntheticEngine::start(
            "v",
            SyntheticOptions {
                context_length: 8,
                vocab_size: 100,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            engine.submit(request(6)),
            Err(EngineError::ContextLengthExceeded { .. })
        ));
        let empty = GenerationRequest::new(
            Prompt::Text("  ".into()),
            SamplingParams::greedy(1),
            "t".parse().unwrap(),
        );
        assert!(matches!(
            engine.submit(empty),
            Err(EngineError::EmptyPrompt)
        ));
        let bad = GenerationRequest::new(
            Prompt::Tokens(vec![1, 100]),
            SamplingParams::greedy(1),
            "t".parse().unwrap(),
        );
        assert!(matches!(
            engine.submit(bad),
            Err(EngineError::InvalidTokenId(100))
        ));
        assert_eq!(EngineCounters::get(&engine.counters().active), 0);
    }
}

//! Sentence embeddings: a BERT encoder (all-MiniLM-L6-v2 by default, candle's `BertModel` over
//! the safetensors) whose token vectors are mean-pooled over the attention mask and
//! L2-normalised, as sentence-transformers computes them for this model.
//!
//! Requests that arrive together are encoded together: one thread takes every input waiting
//! (up to `max_batch_tokens` padded tokens per forward pass), pads them to the longest, runs one
//! forward pass with the attention mask, and answers each caller with its own vectors. Padding
//! is masked out of attention and of the mean, so a vector does not depend on its batch beyond
//! rounding.

#![warn(missing_docs)]

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;
use tokio::sync::oneshot;

use engine_api::{EngineError, Result};

/// How the embedding engine batches.
#[derive(Debug, Clone)]
pub struct EmbeddingOptions {
    /// Most padded tokens (inputs × longest input) in one forward pass.
    pub max_batch_tokens: usize,
}

impl Default for EmbeddingOptions {
    fn default() -> Self {
        Self {
            max_batch_tokens: 16_384,
        }
    }
}

/// One caller's inputs and where its vectors go.
struct Job {
    inputs: Vec<Vec<u32>>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>>>,
}

/// A loaded embedding model and its batching thread.
pub struct EmbeddingModel {
    tokenizer: Tokenizer,
    jobs: crossbeam_channel::Sender<Job>,
    dimensions: usize,
    max_input_tokens: usize,
    vocab_size: usize,
}

impl EmbeddingModel {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir` (on the CPU)
    /// and starts the batching thread.
    pub fn load(dir: &Path, options: EmbeddingOptions) -> Result<Self> {
        let load_error = |what: &str, e: &dyn std::fmt::Display| {
            EngineError::Load(format!("embedding model {}: {what}: {e}", dir.display()))
        };
        let config_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| load_error("config.json", &e))?;
        let config: Config =
            serde_json::from_str(&config_text).map_err(|e| load_error("config.json", &e))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| load_error("tokenizer.json", &e))?;
        // The file pads and truncates to 128 for training; here inputs keep their length and
        // an input longer than the model's positions is refused, not cut.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| load_error("tokenizer.json", &e))?;
        let device = Device::Cpu;
        // SAFETY: the file is memory-mapped read-only and not modified while mapped (it lives
        // in the model cache, written once by the fetch before any load).
        let weights = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &device,
            )
        }
        .map_err(|e| load_error("model.safetensors", &e))?;
        let model =
            BertModel::load(weights, &config).map_err(|e| load_error("model.safetensors", &e))?;
        let (jobs, queue) = crossbeam_channel::unbounded();
        let max_batch_tokens = options.max_batch_tokens.max(config.max_position_embeddings);
        std::thread::Builder::new()
            .name("embeddings".into())
            .spawn(move || encode_batches(&model, &device, &queue, max_batch_tokens))
            .map_err(|e| EngineError::Load(format!("cannot start the embedding thread: {e}")))?;
        Ok(Self {
            tokenizer,
            jobs,
            dimensions: config.hidden_size,
            max_input_tokens: config.max_position_embeddings,
            vocab_size: config.vocab_size,
        })
    }

    /// Length of every vector.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Most tokens one input may have (the model's positions).
    pub fn max_input_tokens(&self) -> usize {
        self.max_input_tokens
    }

    /// The token ids of `text`, with the model's special tokens (`[CLS] ... [SEP]`).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Checks inputs given as token ids: each between 1 and `max_input_tokens` long, every id
    /// in the vocabulary.
    pub fn check_input(&self, ids: &[u32]) -> Result<()> {
        let invalid = |message: String| Err(EngineError::InvalidInput(message));
        if ids.is_empty() {
            return invalid("an input is empty".into());
        }
        if ids.len() > self.max_input_tokens {
            return invalid(format!(
                "an input has {} tokens; this model takes at most {}",
                ids.len(),
                self.max_input_tokens
            ));
        }
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return invalid(format!(
                "token id {bad} is outside the vocabulary (0..{})",
                self.vocab_size
            ));
        }
        Ok(())
    }

    /// The unit vectors of `inputs` (token ids, already checked), in order.
    pub async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        if let Some(bad) = inputs.iter().find_map(|ids| self.check_input(ids).err()) {
            return Err(bad);
        }
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { inputs, reply })
            .map_err(|_| EngineError::EngineStopped)?;
        answer.await.map_err(|_| EngineError::EngineStopped)?
    }
}

/// The batching thread: take a job, then every job already waiting (within the token budget),
/// encode their inputs in passes of at most `max_batch_tokens` padded tokens, answer each.
fn encode_batches(
    model: &BertModel,
    device: &Device,
    queue: &crossbeam_channel::Receiver<Job>,
    max_batch_tokens: usize,
) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        let mut tokens: usize = jobs[0].inputs.iter().map(Vec::len).sum();
        while tokens < max_batch_tokens {
            match queue.try_recv() {
                Ok(job) => {
                    tokens += job.inputs.iter().map(Vec::len).sum::<usize>();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let inputs: Vec<&[u32]> = jobs
            .iter()
            .flat_map(|job| job.inputs.iter().map(Vec::as_slice))
            .collect();
        let mut vectors = match encode_all(model, device, &inputs, max_batch_tokens) {
            Ok(vectors) => vectors.into_iter(),
            Err(e) => {
                let message = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(EngineError::Embedding(message.clone())));
                }
                continue;
            }
        };
        for job in jobs {
            let own: Vec<Vec<f32>> = vectors.by_ref().take(job.inputs.len()).collect();
            let _ = job.reply.send(Ok(own));
        }
    }
}

/// Every input's vector, in order, in passes of at most `max_batch_tokens` padded tokens.
fn encode_all(
    model: &BertModel,
    device: &Device,
    inputs: &[&[u32]],
    max_batch_tokens: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut vectors = Vec::with_capacity(inputs.len());
    let mut start = 0;
    while start < inputs.len() {
        let mut end = start + 1;
        let mut longest = inputs[start].len();
        while end < inputs.len() {
            let next = longest.max(inputs[end].len());
            if next * (end + 1 - start) > max_batch_tokens {
                break;
            }
            longest = next;
            end += 1;
        }
        vectors.extend(
            encode(model, device, &inputs[start..end], longest).map_err(EngineError::execution)?,
        );
        start = end;
    }
    Ok(vectors)
}

/// One forward pass over `inputs` padded to `longest`: mean over the real tokens, unit length.
fn encode(
    model: &BertModel,
    device: &Device,
    inputs: &[&[u32]],
    longest: usize,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let n = inputs.len();
    let mut ids = vec![0u32; n * longest];
    let mut mask = vec![0f32; n * longest];
    for (row, input) in inputs.iter().enumerate() {
        ids[row * longest..row * longest + input.len()].copy_from_slice(input);
        mask[row * longest..row * longest + input.len()].fill(1.0);
    }
    let ids = Tensor::from_vec(ids, (n, longest), device)?;
    let mask = Tensor::from_vec(mask, (n, longest), device)?;
    let token_types = ids.zeros_like()?;
    let hidden = model.forward(&ids, &token_types, Some(&mask))?; // (n, longest, dim)
    let summed = hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?; // (n, dim)
    let counts = mask.sum_keepdim(1)?; // (n, 1)
    let mean = summed.broadcast_div(&counts)?;
    let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
    let unit = mean.broadcast_div(&norms)?;
    unit.to_vec2::<f32>()
}

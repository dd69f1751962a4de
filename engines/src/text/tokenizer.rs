//! A byte-level BPE tokenizer built from the `tokenizer.ggml.*` metadata of a GGUF file.
//!
//! We build it ourselves with the `tokenizers` crate rather than use candle's GGUF tokenizer:
//! that one inserts a prefix space after each special token (37 ids instead of llama.cpp's 38 for
//! the SmolLM2 chat prompt in `shared/fixtures`), which changes what the model sees.

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{EngineError, Result};

/// GGUF `token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The model's tokenizer plus the ids the engine needs to know about.
pub struct GgufTokenizer {
    inner: Tokenizer,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    vocab_size: usize,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

fn metadata<'a>(content: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| EngineError::Load(format!("GGUF metadata has no `{key}`")))
}

fn strings(value: &gguf_file::Value, key: &str) -> Result<Vec<String>> {
    value
        .to_vec()
        .map_err(|e| EngineError::Load(format!("`{key}`: {e}")))?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| EngineError::Load(format!("`{key}`: {e}")))
}

impl GgufTokenizer {
    /// Builds the tokenizer from GGUF metadata. Only `tokenizer.ggml.model = "gpt2"` (byte-level
    /// BPE, used by SmolLM2, Llama 3, Qwen and most current llama-family models) is supported.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let kind = metadata(content, "tokenizer.ggml.model")?
            .to_string()
            .map_err(|e| EngineError::Load(e.to_string()))?;
        if kind != "gpt2" {
            return Err(EngineError::Load(format!(
                "tokenizer model `{kind}` is not supported (only byte-level BPE, `gpt2`)"
            )));
        }
        let tokens = strings(metadata(content, "tokenizer.ggml.tokens")?, "tokens")?;
        let merges = strings(metadata(content, "tokenizer.ggml.merges")?, "merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| EngineError::Load(format!("malformed merge `{m}`")))
            })
            .collect::<Result<Vec<_>>>()?;
        let token_types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| EngineError::Load(e.to_string()))?
                .iter()
                .map(|t| t.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let get_id = |key: &str| content.metadata.get(key).and_then(|v| v.to_u32().ok());
        let bos_id = get_id("tokenizer.ggml.bos_token_id");
        let eos_id = get_id("tokenizer.ggml.eos_token_id")
            .ok_or_else(|| EngineError::Load("GGUF metadata has no EOS token id".into()))?;

        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, tok)| (tok.clone(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| EngineError::Load(format!("BPE: {e}")))?;
        let mut inner = Tokenizer::new(bpe);
        // GPT-2 style byte-level pre-tokenisation, no prefix space (GGUF `tokenizer.ggml.pre`
        // values such as `smollm`, `llama-bpe`, `gpt-2` all mean this regex family).
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, ty)| matches!(**ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
            .map(|(tok, _)| AddedToken::from(tok.clone(), true))
            .collect();
        inner.add_special_tokens(&specials);

        Ok(Self {
            inner,
            bos_id,
            eos_ids: vec![eos_id],
            vocab_size: tokens.len(),
        })
    }

    /// Encodes text. Special tokens written in the text (`<|im_start|>`) become their ids, as
    /// chat templates need. No BOS is added: templates that want one write it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes ids to text, leaving special tokens out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    /// The text form of one token id (special tokens included), if it exists.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The tokenizer of the `tokenizers` crate, for incremental decoding.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// The beginning-of-sequence token, if the model uses one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

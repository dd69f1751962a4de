//! A byte-level BPE tokenizer built from the `tokenizer.ggml.*` metadata of a GGUF file.
//!
//! We build it ourselves with the `tokenizers` crate rather than use candle's GGUF tokenizer:
//! that one inserts a prefix space after each special token (37 ids instead of llama.cpp's 38 for
//! the SmolLM2 chat prompt in `local_engine/tests/fixtures`), which changes what the model sees.

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
    /// Reads control tokens' spellings as text: where control tokens are is decided before
    /// (`specials`), so that a client's text is never read as one.
    inner: Tokenizer,
    /// The control tokens' spellings, and their ids in the same order.
    specials: Vec<String>,
    special_ids: Vec<u32>,
    /// Finds them in a prompt, leftmost-longest (as the tokenizers crate splits added tokens).
    special_finder: Option<aho_corasick::AhoCorasick>,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    vocab_size: usize,
    /// Each token's bytes as the model produces them (the byte-level alphabet undone);
    /// special tokens: their text, and `true` in `special`.
    token_bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
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
        let is_special = |ty: &i32| matches!(*ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED);
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, ty)| is_special(ty))
            .map(|(tok, _)| AddedToken::from(tok.clone(), true))
            .collect();
        inner.add_special_tokens(&specials);
        // Decoding still knows them as special; encoding reads every spelling as text, and
        // `encode_with_markup` places the control tokens itself.
        inner.set_encode_special_tokens(true);
        let (special_spellings, special_ids): (Vec<String>, Vec<u32>) = tokens
            .iter()
            .zip(&token_types)
            .enumerate()
            .filter(|(_, (tok, ty))| is_special(ty) && !tok.is_empty())
            .map(|(id, (tok, _))| (tok.clone(), id as u32))
            .unzip();
        let special_finder = match special_spellings.is_empty() {
            true => None,
            false => Some(
                aho_corasick::AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                    .build(&special_spellings)
                    .map_err(|e| EngineError::Load(format!("control tokens: {e}")))?,
            ),
        };
        let special: Vec<bool> = (0..tokens.len())
            .map(|i| token_types.get(i).is_some_and(is_special))
            .collect();
        let unicode_to_byte = byte_level_alphabet();
        let token_bytes = tokens
            .iter()
            .zip(&special)
            .map(|(tok, &special)| match special {
                true => tok.as_bytes().to_vec(),
                false => tok
                    .chars()
                    .map(|c| unicode_to_byte.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    // Not in the byte-level alphabet (malformed vocabulary): its UTF-8.
                    .unwrap_or_else(|| tok.as_bytes().to_vec()),
            })
            .collect();

        Ok(Self {
            inner,
            specials: special_spellings,
            special_ids,
            special_finder,
            bos_id,
            eos_ids: vec![eos_id],
            vocab_size: tokens.len(),
            token_bytes,
            special,
        })
    }

    /// Encodes text. Special tokens written in the text (`<|im_start|>`) become their ids, as
    /// chat templates and a completion's raw prompt need. No BOS is added: templates that want
    /// one write it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with_markup(text, &[])
    }

    /// Encodes a client's text: control tokens' spellings in it are text like any other
    /// (`<|im_start|>` becomes the ordinary tokens of those characters).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The spellings of the vocabulary's control tokens.
    pub fn special_spellings(&self) -> impl Iterator<Item = &str> {
        self.specials.iter().map(String::as_str)
    }

    /// Whether `text` spells one of the vocabulary's control tokens somewhere (one pass of the
    /// same automaton that places them in a prompt).
    pub fn spells_a_control_token(&self, text: &str) -> bool {
        self.special_finder
            .as_ref()
            .is_some_and(|finder| finder.is_match(text))
    }

    /// Encodes a rendered prompt whose `client` byte ranges are a client's text: control
    /// tokens are read only outside them (the template's markup), the rest is text. The
    /// control tokens are found leftmost-longest and the text between them is encoded piece
    /// by piece, as the tokenizers crate splits added tokens: with no ranges this is
    /// [`Self::encode`], and a prompt whose client text spells no control token gets the same
    /// ids either way.
    pub fn encode_with_markup(
        &self,
        text: &str,
        client: &[std::ops::Range<usize>],
    ) -> Result<Vec<u32>> {
        let Some(finder) = &self.special_finder else {
            return self.encode_text(text);
        };
        let in_client =
            |start: usize, end: usize| client.iter().any(|r| start < r.end && r.start < end);
        let mut ids = Vec::new();
        let mut at = 0;
        let mut search = aho_corasick::Input::new(text);
        while let Some(found) = finder.find(search.clone()) {
            let (start, end) = (found.start(), found.end());
            if in_client(start, end) {
                // A client's text: read on from the next character (a shorter control
                // spelling may still start inside the markup after it).
                let next = text[start..].chars().next().map_or(1, char::len_utf8);
                search.set_start(start + next);
                continue;
            }
            if at < start {
                ids.extend(self.encode_text(&text[at..start])?);
            }
            ids.push(self.special_ids[found.pattern().as_usize()]);
            at = end;
            search.set_start(end);
        }
        if at < text.len() {
            ids.extend(self.encode_text(&text[at..])?);
        }
        Ok(ids)
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

    /// The bytes token `id` stands for (a special token's name for special tokens); empty
    /// for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Is `id` a control token (`<|im_end|>`), which decoding leaves out?
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }
}

/// GPT-2's byte-level alphabet reversed: the printable character that stands for each byte in
/// a byte-level BPE vocabulary, mapped back to the byte. Printable ASCII and Latin-1 stand for
/// themselves; the other 68 bytes are shifted to U+0100 and up, in byte order.
fn byte_level_alphabet() -> std::collections::HashMap<char, u8> {
    let printable =
        |b: u8| matches!(b, b'!'..=b'~') || matches!(b, 0xA1..=0xAC) || matches!(b, 0xAE..=0xFF);
    let mut shifted = 0u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                char::from(b)
            } else {
                shifted += 1;
                char::from_u32(255 + shifted).expect("U+0100..U+0143 are characters")
            };
            (c, b)
        })
        .collect()
}

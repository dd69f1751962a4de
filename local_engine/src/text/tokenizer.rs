//! The model's tokenizer, built from the `tokenizer.ggml.*` metadata of a GGUF file: byte-level
//! BPE (`gpt2`: Llama 3, Qwen, SmolLM, ...) with the pre-tokenizer `tokenizer.ggml.pre` names,
//! or SentencePiece (`llama`: Llama 2, Mistral, TinyLlama, Phi-3), with the file's flags for
//! BOS and the prefix space.
//!
//! We build it ourselves rather than use candle's GGUF tokenizer: that one inserts a prefix
//! space after each special token (37 ids instead of llama.cpp's 38 for the SmolLM2 chat prompt
//! in `local_engine/tests/fixtures`), which changes what the model sees. BPE encodes with the
//! `tokenizers` crate; SentencePiece with [`super::spm`] (the `tokenizers` crate has no merge-by-
//! score model). Both decode with the `tokenizers` crate.

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::pre_tokenize;
use super::spm::{self, SentencePiece};
use crate::error::{EngineError, Result};

/// GGUF `token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_UNKNOWN: i32 = 2;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;
const TOKEN_TYPE_BYTE: i32 = 6;

/// How text becomes ids.
#[derive(Clone)]
enum Encoder {
    /// Byte-level BPE: the `tokenizers` crate with the file's pre-tokenizer.
    BytePairs,
    /// SentencePiece: spaces as `▁`, and one before the text where the file asks for it.
    SentencePiece {
        model: Box<SentencePiece>,
        prefix_space: bool,
    },
}

/// The model's tokenizer plus the ids the engine needs to know about.
#[derive(Clone)]
pub struct GgufTokenizer {
    /// Decodes (both kinds) and encodes BPE. Reads control tokens' spellings as text: where
    /// control tokens are is decided before (`specials`), so that a client's text is never
    /// read as one.
    inner: Tokenizer,
    encoder: Encoder,
    /// The control tokens' spellings, and their ids in the same order.
    specials: Vec<String>,
    special_ids: Vec<u32>,
    /// Finds them in a prompt, leftmost-longest (as the tokenizers crate splits added tokens).
    special_finder: Option<aho_corasick::AhoCorasick>,
    bos_id: Option<u32>,
    /// Whether a prompt starts with BOS (`tokenizer.ggml.add_bos_token`, else the family's
    /// default): exactly one, whether or not the chat template writes it.
    add_bos: bool,
    eos_ids: Vec<u32>,
    vocab_size: usize,
    /// Each token's bytes as the model produces them (the byte-level alphabet undone, `▁` as
    /// a space, `<0x0A>` as its byte); special tokens: their text, and `true` in `special`.
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

fn flag(content: &gguf_file::Content, key: &str) -> Option<bool> {
    content.metadata.get(key).and_then(|v| v.to_bool().ok())
}

fn load_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::Load(e.to_string())
}

/// The tokenizer kinds GGUF's `tokenizer.ggml.model` may name that this engine reads.
const SUPPORTED_MODELS: &str = "gpt2 (byte-level BPE), llama (SentencePiece)";

impl GgufTokenizer {
    /// Builds the tokenizer from GGUF metadata.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let kind = metadata(content, "tokenizer.ggml.model")?
            .to_string()
            .map_err(load_error)?
            .clone();
        let tokens = strings(metadata(content, "tokenizer.ggml.tokens")?, "tokens")?;
        let token_types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(load_error)?
                .iter()
                .map(|t| t.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, tok)| (tok.clone(), id as u32))
            .collect();
        let (mut inner, encoder, add_bos_default) = match kind.as_str() {
            "gpt2" => {
                let pre = content
                    .metadata
                    .get("tokenizer.ggml.pre")
                    .and_then(|v| v.to_string().ok())
                    .map(String::as_str);
                let family = pre_tokenize::by_name(pre).ok_or_else(|| {
                    EngineError::Load(format!(
                        "pre-tokenizer `{}` is not supported (supported: {})",
                        pre.unwrap_or_default(),
                        pre_tokenize::SUPPORTED.join(", ")
                    ))
                })?;
                let inner = byte_pair_tokenizer(content, vocab, family)?;
                (inner, Encoder::BytePairs, family.add_bos_by_default)
            }
            "llama" => {
                let scores: Vec<f32> = match content.metadata.get("tokenizer.ggml.scores") {
                    Some(v) => v
                        .to_vec()
                        .map_err(load_error)?
                        .iter()
                        .map(|s| s.to_f32().unwrap_or(0.0))
                        .collect(),
                    None => {
                        return Err(EngineError::Load(
                            "a SentencePiece vocabulary needs `tokenizer.ggml.scores`".into(),
                        ))
                    }
                };
                let unknown = content
                    .metadata
                    .get("tokenizer.ggml.unknown_token_id")
                    .and_then(|v| v.to_u32().ok())
                    .unwrap_or(0);
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, Vec::new())
                    .byte_fallback(true)
                    .build()
                    .map_err(|e| EngineError::Load(format!("vocabulary: {e}")))?;
                let mut inner = Tokenizer::new(bpe);
                let space = Replace::new(spm::SPACE.to_string(), " ").map_err(load_error)?;
                inner.with_decoder(Some(DecoderSequence::new(vec![
                    DecoderWrapper::Replace(space),
                    DecoderWrapper::ByteFallback(ByteFallback::new()),
                    DecoderWrapper::Fuse(Fuse::new()),
                ])));
                let encoder = Encoder::SentencePiece {
                    model: Box::new(SentencePiece::new(&tokens, scores, unknown)),
                    prefix_space: flag(content, "tokenizer.ggml.add_space_prefix").unwrap_or(true),
                };
                (inner, encoder, true)
            }
            other => {
                return Err(EngineError::Load(format!(
                    "tokenizer model `{other}` is not supported (supported: {SUPPORTED_MODELS})"
                )))
            }
        };
        let get_id = |key: &str| content.metadata.get(key).and_then(|v| v.to_u32().ok());
        let bos_id = get_id("tokenizer.ggml.bos_token_id");
        let eos_id = get_id("tokenizer.ggml.eos_token_id")
            .ok_or_else(|| EngineError::Load("GGUF metadata has no EOS token id".into()))?;
        // End of turn (Llama 3's <|eot_id|>) and of message end generation too.
        let mut eos_ids = vec![eos_id];
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = get_id(key).filter(|id| !eos_ids.contains(id)) {
                eos_ids.push(id);
            }
        }
        if let Some(&bad) = eos_ids
            .iter()
            .chain(&bos_id)
            .find(|&&id| id as usize >= tokens.len())
        {
            return Err(EngineError::Load(format!(
                "special token id {bad} is outside the vocabulary of {}",
                tokens.len()
            )));
        }
        let add_bos = bos_id.is_some()
            && flag(content, "tokenizer.ggml.add_bos_token").unwrap_or(add_bos_default);

        let is_special = |ty: &i32| {
            matches!(
                *ty,
                TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_UNKNOWN
            )
        };
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
            .filter(|(_, (tok, ty))| {
                matches!(**ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED) && !tok.is_empty()
            })
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
            .enumerate()
            .map(|(id, tok)| {
                let ty = token_types.get(id).copied().unwrap_or(1);
                match (&encoder, special[id]) {
                    (_, true) => tok.as_bytes().to_vec(),
                    (Encoder::BytePairs, false) => tok
                        .chars()
                        .map(|c| unicode_to_byte.get(&c).copied())
                        .collect::<Option<Vec<u8>>>()
                        // Not in the byte-level alphabet (malformed vocabulary): its UTF-8.
                        .unwrap_or_else(|| tok.as_bytes().to_vec()),
                    (Encoder::SentencePiece { .. }, false) => match ty == TOKEN_TYPE_BYTE {
                        true => {
                            byte_piece(tok).map_or_else(|| tok.as_bytes().to_vec(), |b| vec![b])
                        }
                        false => tok.replace(spm::SPACE, " ").into_bytes(),
                    },
                }
            })
            .collect();

        Ok(Self {
            inner,
            encoder,
            specials: special_spellings,
            special_ids,
            special_finder,
            bos_id,
            add_bos,
            eos_ids,
            vocab_size: tokens.len(),
            token_bytes,
            special,
        })
    }

    /// Encodes text. Special tokens written in the text (`<|im_start|>`) become their ids, as
    /// chat templates and a completion's raw prompt need. No BOS is added
    /// ([`Self::with_bos`] does, where the model wants one).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with_markup(text, &[])
    }

    /// Encodes a client's text: control tokens' spellings in it are text like any other
    /// (`<|im_start|>` becomes the ordinary tokens of those characters). Text that starts a
    /// prompt or follows a control token: SentencePiece puts its prefix space before it.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        match &self.encoder {
            Encoder::BytePairs => self.encode_fragment(text),
            // No text, no prefix space either.
            Encoder::SentencePiece { .. } if text.is_empty() => Ok(Vec::new()),
            Encoder::SentencePiece {
                model,
                prefix_space,
            } => {
                let mut ids = Vec::new();
                model.encode_escaped(&spm::escape(text, *prefix_space), &mut ids);
                Ok(ids)
            }
        }
    }

    /// Encodes a piece of text from the middle of a longer one (no prefix space): what the
    /// grammar engine asks for the literal strings of a grammar.
    pub fn encode_fragment(&self, text: &str) -> Result<Vec<u32>> {
        match &self.encoder {
            Encoder::BytePairs => {
                let encoding = self
                    .inner
                    .encode(text, false)
                    .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
                Ok(encoding.get_ids().to_vec())
            }
            Encoder::SentencePiece { model, .. } => {
                let mut ids = Vec::new();
                model.encode_escaped(&spm::escape(text, false), &mut ids);
                Ok(ids)
            }
        }
    }

    /// `ids` starting with exactly one BOS where the model wants one (`add_bos_token`): added
    /// if the prompt lacks it, kept if a chat template wrote it.
    pub fn with_bos(&self, mut ids: Vec<u32>) -> Vec<u32> {
        if let (true, Some(bos)) = (self.add_bos, self.bos_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        ids
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

/// The byte a SentencePiece byte piece (`<0x0A>`) stands for.
fn byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

/// A byte-level BPE tokenizer over `vocab` with the file's merges and the pre-tokenizer
/// family's expressions, then the byte-level alphabet.
fn byte_pair_tokenizer(
    content: &gguf_file::Content,
    vocab: tokenizers::models::bpe::Vocab,
    family: pre_tokenize::PreTokenizer,
) -> Result<Tokenizer> {
    let merges = strings(metadata(content, "tokenizer.ggml.merges")?, "merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| EngineError::Load(format!("malformed merge `{m}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(family.ignore_merges)
        .build()
        .map_err(|e| EngineError::Load(format!("BPE: {e}")))?;
    let mut inner = Tokenizer::new(bpe);
    let mut steps = family
        .expressions
        .iter()
        .map(|expression| {
            Split::new(
                SplitPattern::Regex(expression.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map(PreTokenizerWrapper::Split)
            .map_err(|e| EngineError::Load(format!("pre-tokenizer `{expression}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    // The expressions cut the words; the byte-level step only maps bytes to its alphabet.
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, true, false,
    )));
    inner.with_pre_tokenizer(Some(PreTokenizerSequence::new(steps)));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(inner)
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

//! The model's vocabulary as the grammar engine (llguidance) sees it.

use std::sync::Arc;

use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::error::{EngineError, Result};
use crate::text::GgufTokenizer;

/// The vocabulary of `tokenizer` for [`structured_output::Grammars::over`].
pub fn token_env(tokenizer: &GgufTokenizer) -> Result<TokEnv> {
    Ok(Arc::new(TokenizerBytes::new(tokenizer)?))
}

/// The model's vocabulary as llguidance sees it: each token's bytes (special tokens marked
/// with 0xFF, llguidance's convention, so the grammar never produces them as text), and the
/// model's tokenizer for text the grammar itself contains.
struct TokenizerBytes {
    trie: TokTrie,
    tokenizer: GgufTokenizer,
}

impl TokenizerBytes {
    fn new(tokenizer: &GgufTokenizer) -> Result<Self> {
        let eos = *tokenizer
            .eos_ids()
            .first()
            .ok_or_else(|| EngineError::Load("the tokenizer has no end-of-sequence id".into()))?;
        let words: Vec<Vec<u8>> = (0..tokenizer.vocab_size() as u32)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id);
                match tokenizer.is_special(id) {
                    true => [&[TokTrie::SPECIAL_TOKEN_MARKER], bytes].concat(),
                    false => bytes.to_vec(),
                }
            })
            .collect();
        let mut info = TokRxInfo::new(words.len() as u32, eos);
        info.tok_bos = tokenizer.bos_id();
        Ok(Self {
            trie: TokTrie::from(&info, &words),
            tokenizer: tokenizer.clone(),
        })
    }
}

impl TokenizerEnv for TokenizerBytes {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.tokenizer
            .encode_fragment(String::from_utf8_lossy(s).as_ref())
            .unwrap_or_default()
    }
}

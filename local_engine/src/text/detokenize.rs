//! Incremental detokenisation: turns a stream of token ids into text deltas without ever
//! splitting a UTF-8 character (a Korean syllable or an emoji often spans several byte-level
//! tokens; a delta is held back until its bytes are complete).

use crate::error::{EngineError, Result};
use crate::text::GgufTokenizer;

/// Per-sequence state of the streaming decoder. It owns no tokenizer, so a sequence can keep it
/// without borrowing; the state machine is `tokenizers::step_decode_stream`.
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl IncrementalDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one generated id; returns the text it completes, if any.
    pub fn step(&mut self, tokenizer: &GgufTokenizer, id: u32) -> Result<Option<String>> {
        tokenizers::step_decode_stream(
            tokenizer.inner(),
            vec![id],
            true,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }
}

//! How byte-level BPE vocabularies cut text into words before merging, by the name GGUF's
//! `tokenizer.ggml.pre` gives (the names and the expressions llama.cpp uses for them, so the
//! same text gives the same ids). Each family is a list of expressions applied in turn, each
//! splitting the pieces the previous one left, matches and the gaps between them alike.

/// A pre-tokenizer family: its expressions, and whether a word that is itself in the
/// vocabulary is taken whole without merging (Llama 3's tokenizer does this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreTokenizer {
    /// Splitting expressions, in order.
    pub expressions: &'static [&'static str],
    /// Take a word found whole in the vocabulary without merges.
    pub ignore_merges: bool,
    /// Whether BOS is added to a prompt when the file does not say
    /// (`tokenizer.ggml.add_bos_token`).
    pub add_bos_by_default: bool,
}

/// GPT-2's expression: contractions, letters, digits, other symbols, spaces.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3's: case-insensitive contractions, digits in runs of up to three, line breaks apart.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2's: Llama 3's with every digit apart.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Every digit apart first, then GPT-2's expression (StarCoder, SmolLM, EXAONE 3, ...).
const DIGITS_THEN_GPT2: &[&str] = &[r"\p{N}", GPT2];

/// The `tokenizer.ggml.pre` names this engine knows, for error messages.
pub const SUPPORTED: &[&str] = &[
    "gpt-2",
    "phi-2",
    "olmo",
    "mpt",
    "exaone4",
    "llama-bpe",
    "llama3",
    "llama-v3",
    "falcon3",
    "pixtral",
    "qwen2",
    "deepseek-r1-qwen",
    "megrez",
    "stablelm2",
    "smollm",
    "starcoder",
    "refact",
    "codeshell",
    "exaone",
    "minerva-7b",
    "command-r",
];

/// The family `name` stands for, if this engine knows it. A file without the key gets GPT-2's
/// (as llama.cpp does, with a warning).
pub fn by_name(name: Option<&str>) -> Option<PreTokenizer> {
    let plain = |expressions| PreTokenizer {
        expressions,
        ignore_merges: false,
        add_bos_by_default: false,
    };
    Some(match name.unwrap_or("gpt-2") {
        "gpt-2" | "phi-2" | "olmo" | "mpt" | "exaone4" => plain(&[GPT2]),
        "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "pixtral" => PreTokenizer {
            expressions: &[LLAMA3],
            ignore_merges: true,
            add_bos_by_default: true,
        },
        "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" => plain(&[QWEN2]),
        "smollm" | "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "command-r" => {
            plain(DIGITS_THEN_GPT2)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_name_has_a_family() {
        for name in SUPPORTED {
            assert!(by_name(Some(name)).is_some(), "{name}");
        }
        assert_eq!(by_name(None), by_name(Some("gpt-2")));
        assert!(by_name(Some("tekken")).is_none());
    }
}

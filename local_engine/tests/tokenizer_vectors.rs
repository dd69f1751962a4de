//! Our tokenizers against llama.cpp's own test vectors: each vocabulary file of llama.cpp's
//! `models/` (vendored by `scripts/oracles/vendor-vocab-tests.sh`) with its `.inp` texts and
//! the ids llama.cpp's tokenizer gives them in `.out` (no BOS, control spellings read as text,
//! as llama.cpp's `test-tokenizer-0` runs them).

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use local_engine::text::GgufTokenizer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vocab")
}

/// A text whose encoding differs: the text, our ids, llama.cpp's.
type Mismatch = (String, Vec<u32>, Vec<u32>);

/// How many vectors there are, and those whose encoding differs.
fn mismatches(vocab: &str) -> (usize, Vec<Mismatch>) {
    let base = fixtures().join(format!("ggml-vocab-{vocab}.gguf"));
    let mut file = std::fs::File::open(&base).expect("vocabulary file");
    let content = gguf_file::Content::read(&mut file).expect("gguf");
    let tokenizer = GgufTokenizer::from_gguf(&content).expect("tokenizer builds");
    let inputs = std::fs::read_to_string(base.with_extension("gguf.inp")).expect(".inp");
    let outputs = std::fs::read_to_string(base.with_extension("gguf.out")).expect(".out");
    // Each text ends with the separator (llama.cpp's reader: nothing after the last one).
    let texts: Vec<&str> = inputs
        .strip_suffix("\n__ggml_vocab_test__\n")
        .unwrap_or(&inputs)
        .split("\n__ggml_vocab_test__\n")
        .collect();
    let expected: Vec<Vec<u32>> = outputs
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().expect("an id"))
                .collect()
        })
        .collect();
    assert_eq!(
        texts.len(),
        expected.len(),
        "{vocab}: .inp and .out disagree"
    );
    let mut wrong = Vec::new();
    for (text, expected) in texts.iter().zip(&expected) {
        let ours = tokenizer.encode_text(text).expect("encodes");
        if &ours != expected {
            wrong.push((text.to_string(), ours, expected.clone()));
        }
    }
    (texts.len(), wrong)
}

fn check(vocab: &str) {
    let (total, wrong) = mismatches(vocab);
    assert!(total > 30, "{vocab}: only {total} vectors");
    assert!(
        wrong.is_empty(),
        "{vocab}: {} of {total} texts tokenized differently from llama.cpp: {wrong:#?}",
        wrong.len()
    );
}

#[test]
fn sentencepiece_llama() {
    check("llama-spm");
}

#[test]
fn sentencepiece_phi3() {
    check("phi-3");
}

#[test]
fn byte_pairs_gpt2() {
    check("gpt-2");
}

#[test]
fn byte_pairs_digits_then_gpt2_as_smollm() {
    check("starcoder");
}

#[test]
fn byte_pairs_llama3() {
    check("llama-bpe");
}

#[test]
fn byte_pairs_qwen2() {
    check("qwen2");
}

//! Broken model files through the real loader: each fails with a message that names the
//! problem, none panics. The files are the tiny Qwen 2 model of the oracle tests, damaged in
//! one place each (bytes patched in place, so every other offset holds).

use std::path::{Path, PathBuf};

use local_engine::{DeviceSpec, LoadedModel, ModelFile, WeightFormat};

fn tiny() -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/tests/fixtures/tiny/tiny-qwen2-Q8_0.gguf"),
    )
    .expect("tiny model")
}

/// Loads `bytes` as a model file; the error's message.
fn load_error(bytes: &[u8]) -> String {
    let dir = tempfile_dir();
    let path = dir.join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    let outcome = std::panic::catch_unwind(|| {
        LoadedModel::load(&ModelFile {
            path: path.clone(),
            device: DeviceSpec::Cpu,
            weight_format: WeightFormat::AsStored,
        })
    })
    .expect("loading must not panic");
    let _ = std::fs::remove_dir_all(&dir);
    match outcome {
        Ok(_) => panic!("a damaged file loaded"),
        Err(e) => e.to_string(),
    }
}

fn tempfile_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("bad-files-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where `needle` starts in `bytes`.
fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in the file", String::from_utf8_lossy(needle)))
}

/// The u32 value of metadata key `key` (its type id follows the key, the value that).
fn u32_value_at(bytes: &[u8], key: &str) -> usize {
    let at = find(bytes, key.as_bytes()) + key.len();
    assert_eq!(
        &bytes[at..at + 4],
        &4u32.to_le_bytes(),
        "{key} is not a u32"
    );
    at + 4
}

#[test]
fn the_undamaged_file_loads() {
    let dir = tempfile_dir();
    let path = dir.join("model.gguf");
    std::fs::write(&path, tiny()).unwrap();
    LoadedModel::load(&ModelFile {
        path,
        device: DeviceSpec::Cpu,
        weight_format: WeightFormat::AsStored,
    })
    .expect("the fixture itself loads");
}

#[test]
fn a_truncated_file_says_so() {
    let bytes = tiny();
    for cut in [10, 2000, bytes.len() / 2, bytes.len() - 1] {
        let message = load_error(&bytes[..cut]);
        assert!(message.contains("truncated"), "cut at {cut}: {message}");
    }
}

#[test]
fn an_unknown_tensor_type_is_named() {
    let mut bytes = tiny();
    let name = b"blk.1.attn_output.weight";
    let at = find(&bytes, name) + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let type_at = at + 4 + 8 * n_dims;
    bytes[type_at..type_at + 4].copy_from_slice(&35u32.to_le_bytes()); // TQ2_0
    let message = load_error(&bytes);
    assert!(message.contains("blk.1.attn_output.weight"), "{message}");
    assert!(message.contains("TQ2_0"), "{message}");
}

#[test]
fn a_tensor_that_disagrees_with_the_metadata_is_named() {
    let mut bytes = tiny();
    let at = u32_value_at(&bytes, "qwen2.feed_forward_length");
    bytes[at..at + 4].copy_from_slice(&256u32.to_le_bytes()); // the file's MLP is 512 wide
    let message = load_error(&bytes);
    assert!(message.contains("blk.0.ffn_gate/up"), "{message}");
    assert!(message.contains("disagrees with the metadata"), "{message}");
}

#[test]
fn a_vocabulary_without_merges_is_named() {
    let mut bytes = tiny();
    let at = find(&bytes, b"tokenizer.ggml.merges");
    bytes[at..at + 21].copy_from_slice(b"tokenizer.ggml.mergez");
    let message = load_error(&bytes);
    assert!(message.contains("tokenizer.ggml.merges"), "{message}");
}

#[test]
fn unknown_architectures_and_pre_tokenizers_list_what_is_supported() {
    let mut bytes = tiny();
    let key = b"general.architecture";
    // The key, its type (u32) and the string's length (u64), then the value.
    let at = find(&bytes, key) + key.len() + 4 + 8;
    assert_eq!(&bytes[at..at + 5], b"qwen2");
    bytes[at..at + 5].copy_from_slice(b"mamba");
    let message = load_error(&bytes);
    assert!(message.contains("`mamba`"), "{message}");
    assert!(
        message.contains("llama, qwen2, qwen3, phi3, exaone"),
        "{message}"
    );

    let mut bytes = tiny();
    let key = b"tokenizer.ggml.pre";
    let value = find(&bytes, key) + key.len() + 4 + 8;
    assert_eq!(&bytes[value..value + 5], b"gpt-2");
    bytes[value..value + 5].copy_from_slice(b"gpt-9");
    let message = load_error(&bytes);
    assert!(message.contains("pre-tokenizer `gpt-9`"), "{message}");
    assert!(message.contains("llama-bpe"), "{message}");
}

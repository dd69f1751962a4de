//! A model's weights in memory stay near the file's size: every matrix is held in a quantized
//! layout (no f32 copies), each type at the bits per weight docs/models.md states. The tiny
//! models of the oracle tests, one per architecture and type.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use models::{LlamaModel, WeightFormat};

/// Largest ratio of weights in memory to the file's size: Q4_0 is held at 6 bits a weight
/// against the file's 4.5 (f32 scale and offset per 32 weights); f32 copies would be 7x.
const MAX_RATIO: f64 = 1.4;

#[test]
fn weights_in_memory_stay_near_the_file_size() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "{} tiny models", files.len());
    for path in files {
        let mut file = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut file).unwrap();
        // The tensors' data, without the header (vocabulary strings are not weights).
        let data: u64 = content
            .tensor_infos
            .values()
            .map(|t| {
                let (block, bytes) = (t.ggml_dtype.block_size(), t.ggml_dtype.type_size());
                (t.shape.elem_count() / block * bytes) as u64
            })
            .sum();
        let model =
            LlamaModel::from_gguf(&content, &mut file, &Device::Cpu, WeightFormat::AsStored)
                .unwrap();
        let held = model.weight_bytes().unwrap() as f64;
        let ratio = held / data as f64;
        eprintln!("{}: {ratio:.2}x the file's tensor data", path.display());
        assert!(
            ratio <= MAX_RATIO,
            "{}: weights take {ratio:.2}x the file's tensor data",
            path.display()
        );
    }
}

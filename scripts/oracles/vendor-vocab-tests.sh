#!/usr/bin/env bash
# Copies llama.cpp's tokenizer test vocabularies and vectors (models/ggml-vocab-*.gguf with
# their .inp/.out: texts and the ids llama.cpp's own tokenizer gives them) from the source in
# the llama-cpp-python sdist into local_engine/tests/fixtures/vocab/, where
# local_engine/tests/tokenizer_vectors.rs reads them. llama.cpp is MIT-licensed; its licence
# goes beside the files. Run again after changing the llama.cpp version; commit what it writes.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
# shellcheck source=../lib/llama-cpp.sh
source "$ROOT/scripts/lib/llama-cpp.sh"
build_llama_cpp >/dev/null # fetches the source; builds nothing
SRC=$(llama_cpp_source)
OUT=$ROOT/local_engine/tests/fixtures/vocab
mkdir -p "$OUT"
# SentencePiece (llama-spm, phi-3); byte-level BPE with the GPT-2, digits-then-GPT-2
# (starcoder: SmolLM's family), Llama 3 and Qwen 2 pre-tokenizers.
for vocab in llama-spm phi-3 gpt-2 starcoder llama-bpe qwen2; do
    for ext in gguf gguf.inp gguf.out; do
        cp "$SRC/models/ggml-vocab-$vocab.$ext" "$OUT/"
    done
done
cp "$SRC/LICENSE" "$OUT/LICENSE-llama.cpp"
echo "From llama.cpp's models/ in llama-cpp-python==$LLAMA_CPP_PYTHON's sdist" >"$OUT/PROVENANCE"
ls -la "$OUT"

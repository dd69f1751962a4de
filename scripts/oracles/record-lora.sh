#!/usr/bin/env bash
# Records llama.cpp's answers with LoRA adapters into committed fixtures, so CI compares our
# adapters with llama.cpp's without building it:
#   1. writes the adapters for the tiny models (make_tiny_loras.py, the PyPI `gguf` package)
#      into models/tests/fixtures/tiny-lora/;
#   2. runs llama-server on each adapter's Q8_0 base model with `--lora ADAPTER` and records,
#      for fixed token-id prompts, its greedy continuation with the top log-probabilities of
#      every step (record_logits.py), beside the adapter.
# llama.cpp is built from the llama-cpp-python sdist (scripts/lib/llama-cpp.sh), never committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
# shellcheck source=../lib/llama-cpp.sh
source "$ROOT/scripts/lib/llama-cpp.sh"

OUT=$ROOT/models/tests/fixtures/tiny-lora
BASES=$ROOT/models/tests/fixtures/tiny
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; [[ -n ${SERVER:-} ]] && kill "$SERVER" 2>/dev/null || true' EXIT
mkdir -p "$OUT"

BIN=$(build_llama_cpp llama-server)
python3 -m pip install -q "gguf==0.19.0" "numpy<3"
(cd "$ROOT/scripts/oracles" && python3 make_tiny_loras.py "$OUT" >/dev/null)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
for adapter in "$OUT"/*.gguf; do
    stem=$(basename "$adapter" .gguf)
    arch=${stem#tiny-}
    arch=${arch%%-*}
    base=tiny-$arch-Q8_0.gguf
    "$BIN/llama-server" -m "$BASES/$base" --lora "$adapter" --port "$port" -t 2 -c 1024 -np 1 \
        --no-webui >"$WORK/server.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 1 300); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/health" && break
        sleep 0.1
    done
    python3 "$ROOT/scripts/oracles/record_logits.py" "http://127.0.0.1:$port" "$base" \
        "$OUT/$stem.llama-cpp.json"
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    SERVER=
done
{
    echo "Recorded by scripts/oracles/record-lora.sh on $(date -u +%Y-%m-%d)"
    echo "llama.cpp: the source in llama-cpp-python==$LLAMA_CPP_PYTHON's sdist (llama-server --lora)"
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
} >"$OUT/PROVENANCE"
ls -la "$OUT"

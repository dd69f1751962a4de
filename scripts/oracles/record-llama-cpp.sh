#!/usr/bin/env bash
# Records llama.cpp's answers on the tiny random-weight models into committed fixtures, so that
# CI compares our CPU engine with llama.cpp without building it:
#   1. writes one f32 model per architecture (make_tiny_models.py, the PyPI `gguf` package);
#   2. quantizes each with llama.cpp's llama-quantize (Q8_0 and Q4_K_M; llama also Q5_K_M, Q6_K
#      and Q4_0) into models/tests/fixtures/tiny/;
#   3. runs llama-server on each file and records, for fixed token-id prompts, its greedy
#      continuation with the top log-probabilities of every step (record_logits.py).
# llama.cpp is built from the llama-cpp-python sdist (scripts/lib/llama-cpp.sh), never committed.
# Run it again after changing the models or the llama.cpp version; commit what it writes.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
# shellcheck source=../lib/llama-cpp.sh
source "$ROOT/scripts/lib/llama-cpp.sh"

OUT=$ROOT/models/tests/fixtures/tiny
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; [[ -n ${SERVER:-} ]] && kill "$SERVER" 2>/dev/null || true' EXIT
mkdir -p "$OUT"

BIN=$(build_llama_cpp llama-server llama-quantize)
python3 -m pip install -q "gguf==0.19.0" "numpy<3"
python3 "$ROOT/scripts/oracles/make_tiny_models.py" "$WORK" >/dev/null

declare -A QUANTS=(
    [llama]="Q8_0 Q4_K_M Q5_K_M Q6_K Q4_0"
    [qwen2]="Q8_0 Q4_K_M"
    [qwen3]="Q8_0 Q4_K_M"
    [phi3]="Q8_0 Q4_K_M"
    [exaone]="Q8_0 Q4_K_M"
    [gemma3]="Q8_0 Q4_K_M"
)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
for arch in ${ARCHS:-llama qwen2 qwen3 phi3 exaone gemma3}; do
    for quant in ${QUANTS[$arch]}; do
        name=tiny-$arch-$quant.gguf
        "$BIN/llama-quantize" "$WORK/tiny-$arch-f32.gguf" "$OUT/$name" "$quant" >"$WORK/quantize.log" 2>&1 ||
            { cat "$WORK/quantize.log"; exit 1; }
        "$BIN/llama-server" -m "$OUT/$name" --port "$port" -t 2 -c 1024 -np 1 --no-webui \
            >"$WORK/server.log" 2>&1 &
        SERVER=$!
        for _ in $(seq 1 300); do
            curl -sf -o /dev/null "http://127.0.0.1:$port/health" && break
            sleep 0.1
        done
        python3 "$ROOT/scripts/oracles/record_logits.py" "http://127.0.0.1:$port" "$name" \
            "$OUT/${name%.gguf}.llama-cpp.json"
        kill "$SERVER"
        wait "$SERVER" 2>/dev/null || true
        SERVER=
    done
done
{
    echo "Recorded by scripts/oracles/record-llama-cpp.sh on $(date -u +%Y-%m-%d)"
    echo "llama.cpp: the source in llama-cpp-python==$LLAMA_CPP_PYTHON's sdist"
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
} >"$OUT/PROVENANCE"
ls -la "$OUT"

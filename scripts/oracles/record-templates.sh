#!/usr/bin/env bash
# Records how llama.cpp renders fixed conversations with the real chat templates of the model
# families we serve (the copies in llama.cpp's models/templates/, vendored here into
# local_engine/tests/fixtures/templates/ beside what llama-server's /apply-template answered),
# so CI compares our rendering without building llama.cpp. The server runs on a tiny model of
# the oracle tests (its BOS is `<s>`, its EOS `<|im_end|>`); the templates come from the file.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
# shellcheck source=../lib/llama-cpp.sh
source "$ROOT/scripts/lib/llama-cpp.sh"
BIN=$(build_llama_cpp llama-server)
SRC=$(llama_cpp_source)
OUT=$ROOT/local_engine/tests/fixtures/templates
MODEL=$ROOT/models/tests/fixtures/tiny/tiny-qwen2-Q8_0.gguf
mkdir -p "$OUT"
# name and whether the template renders tools (without them we describe the tools in the
# system message ourselves, where llama.cpp drops them: nothing to compare)
TEMPLATES=(
    "Qwen-Qwen2.5-7B-Instruct 1"
    "Qwen-Qwen3-0.6B 1"
    "meta-llama-Llama-3.1-8B-Instruct 1"
    "meta-llama-Llama-3.2-3B-Instruct 1"
    "microsoft-Phi-3.5-mini-instruct 0"
    "mistralai-Mistral-Nemo-Instruct-2407 1"
    "google-gemma-2-2b-it 0"
    "HuggingFaceTB-SmolLM3-3B 0"
)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
trap '[[ -n ${SERVER:-} ]] && kill "$SERVER" 2>/dev/null || true' EXIT
for entry in "${TEMPLATES[@]}"; do
    read -r name tools <<<"$entry"
    cp "$SRC/models/templates/$name.jinja" "$OUT/"
    "$BIN/llama-server" -m "$MODEL" --port "$port" -t 2 -c 512 -np 1 --no-webui --jinja \
        --chat-template-file "$OUT/$name.jinja" >/tmp/record-templates.log 2>&1 &
    SERVER=$!
    for _ in $(seq 1 300); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/health" && break
        sleep 0.1
    done
    python3 "$ROOT/scripts/oracles/record_templates.py" "http://127.0.0.1:$port" "$name" "$tools" \
        "$OUT/$name.llama-cpp.json"
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    SERVER=
done
cp "$SRC/LICENSE" "$OUT/LICENSE-llama.cpp"
echo "Templates from llama.cpp's models/templates/ in llama-cpp-python==$LLAMA_CPP_PYTHON's sdist; renderings by its llama-server /apply-template, $(date -u +%Y-%m-%d)" >"$OUT/PROVENANCE"

#!/usr/bin/env bash
# Greedy text of llama.cpp's llama-server and of our gateway on the same GGUF files, for a set
# of prompts: the first 12 words must agree. For files too large to commit (the default SmolLM2
# re-quantized by llama-quantize to Q4_K_M, Q6_K, Q8_0, ...): run by hand, results in
# docs/models.md.
#
#   scripts/oracles/compare-greedy.sh FILE.gguf...   (SKIP_BUILD=1: use target/release as built)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
# shellcheck source=../lib/llama-cpp.sh
source "$ROOT/scripts/lib/llama-cpp.sh"
BIN=$(build_llama_cpp llama-server)
[[ "${SKIP_BUILD:-0}" = 1 ]] || cargo build --release -q -p gateway
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; [[ -n ${SERVER:-} ]] && kill "$SERVER" 2>/dev/null || true' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

wait_up() {
    for _ in $(seq 1 600); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "server did not come up" >&2
    return 1
}

complete() { # file-out key
    python3 - "$port" "$1" "$2" <<'PY'
import json, sys, urllib.request
port, out, key = sys.argv[1:4]
prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three primary colors are", "To make a cup of tea, first"]
texts = []
for p in prompts:
    body = {"model": "bench-model", "prompt": p, "max_tokens": 24, "temperature": 0}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    texts.append(json.load(urllib.request.urlopen(req, timeout=300))["choices"][0]["text"])
json.dump({"prompts": prompts, "texts": texts}, open(out, "w"))
PY
}

status=0
for file in "$@"; do
    "$BIN/llama-server" -m "$file" --port "$port" -t 2 -c 2048 -np 1 --no-webui -a bench-model \
        >"$WORK/llama.log" 2>&1 &
    SERVER=$!
    wait_up "http://127.0.0.1:$port/health"
    complete "$WORK/llama.json" none
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
    cat >"$WORK/gateway.toml" <<TOML
listen = "127.0.0.1:$port"
[ledger]
path = "$WORK/usage.db"
[[models]]
id = "bench-model"
path = "$file"
[[tenants]]
id = "oracle"
keys = ["$(target/release/gateway keys hash sk-oracle)"]
TOML
    RUST_LOG=warn target/release/gateway serve --config "$WORK/gateway.toml" >"$WORK/gw.log" 2>&1 &
    SERVER=$!
    wait_up "http://127.0.0.1:$port/ready"
    complete "$WORK/ours.json" sk-oracle
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
    SERVER=
    python3 - "$file" "$WORK/llama.json" "$WORK/ours.json" <<'PY' || status=1
import json, sys
name, a, b = sys.argv[1].rsplit("/", 1)[-1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
same = 0
for p, x, y in zip(a["prompts"], a["texts"], b["texts"]):
    wx, wy = x.split()[:12], y.split()[:12]
    ok = wx == wy
    same += ok
    print(f"{name}\t{'same' if ok else 'DIFFERS'}\t{p!r}\n\tllama.cpp: {' '.join(wx)!r}\n\tours:      {' '.join(wy)!r}")
print(f"{name}: {same}/{len(a['prompts'])} prompts give the same first 12 words")
sys.exit(0 if same == len(a["prompts"]) else 1)
PY
done
exit $status

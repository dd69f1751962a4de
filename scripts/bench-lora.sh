#!/usr/bin/env bash
# LoRA serving, side by side on one machine: 16 streams spread over 4 rank-16 adapters of one
# base model, against the same 16 streams on the base model alone, on this gateway and on
# llama.cpp's `llama-server` (adapters loaded with `--lora`, chosen per request with the `lora`
# field of its body). Same GGUF, same streaming client (our load-test harness), greedy, 128 tokens
# with end-of-sequence ignored, /v1/completions, 16 slots, 2 threads, one 8192-position KV cache,
# llama.cpp's prompt cache off; servers one after the other, the four runs repeated ROUNDS times.
#
# The adapters are random low-rank weights of the right shapes for the base model
# (scripts/lib/make_lora_for_model.py, the PyPI `gguf` package): what an adapter costs depends
# on its rank and shapes, not on what it learnt. llama.cpp is built from the llama-cpp-python
# sdist (scripts/lib/llama-cpp.sh), never committed; LLAMA_SERVER=/path skips the build.
#
# Environment: ROUNDS (2), TOKENS (128), PROMPT_WORDS (28), STREAMS (16), ADAPTERS (4), RANK (16),
# THREADS (2), MODEL (default the embedded SmolLM2 Q4_1), SKIP_BUILD (1: use target/release as
# built), BENCH_DIR (~/.cache/gateway-bench). Prints one table; reports stay in $BENCH_DIR/reports.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS=${ROUNDS:-2}
TOKENS=${TOKENS:-128}
PROMPT_WORDS=${PROMPT_WORDS:-28}
STREAMS=${STREAMS:-16}
ADAPTERS=${ADAPTERS:-4}
RANK=${RANK:-16}
THREADS=${THREADS:-2}
BENCH_DIR=${BENCH_DIR:-$HOME/.cache/gateway-bench}
REPORTS=$BENCH_DIR/reports
mkdir -p "$REPORTS"
log() { echo "[bench-lora] $*" >&2; }
# shellcheck source=lib/llama-cpp.sh
source "$ROOT/scripts/lib/llama-cpp.sh"
# shellcheck source=lib/ports.sh
source "$ROOT/scripts/lib/ports.sh"

[[ "${SKIP_BUILD:-0}" = 1 ]] || cargo build --release -q -p gateway -p loadtest
LLAMA_BIN=${LLAMA_SERVER:-$(build_llama_cpp llama-server)/llama-server}
GGUF=${MODEL:-${GATEWAY_CACHE_DIR:-$HOME/.cache/gateway}/SmolLM2-135M-Instruct.Q4_1.gguf}
[[ -f "$GGUF" ]] || { log "no model at $GGUF (start the gateway once to fetch it)"; exit 1; }

WORKDIR=$(mktemp -d)
SERVER_PID=""
cleanup() {
    [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORKDIR"
}
trap cleanup EXIT

python3 -m pip install -q "gguf==0.19.0" "numpy<3"
for i in $(seq 1 "$ADAPTERS"); do
    python3 scripts/lib/make_lora_for_model.py "$GGUF" "$WORKDIR/adapter-$i.gguf" \
        --rank "$RANK" --seed "$i" >&2
done

start_llama() { # port
    local loras=()
    for i in $(seq 1 "$ADAPTERS"); do loras+=(--lora "$WORKDIR/adapter-$i.gguf"); done
    "$LLAMA_BIN" -m "$GGUF" --host 127.0.0.1 --port "$1" -c 8192 -np "$STREAMS" -kvu \
        -t "$THREADS" -tb "$THREADS" --no-cache-prompt --cache-ram 0 --no-webui -a bench-model \
        "${loras[@]}" --lora-init-without-apply >"$WORKDIR/llama.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "http://127.0.0.1:$1/health"
}

start_gateway() { # port
    {
        echo "listen = \"127.0.0.1:$1\""
        echo "[engine]"
        echo "threads = $THREADS"
        echo "[ledger]"
        echo "path = \"$WORKDIR/usage.db\""
        echo "[[models]]"
        echo "id = \"bench-model\""
        echo "path = \"$GGUF\""
        echo "max_running = $STREAMS"
        echo "kv_cache_tokens = 8192"
        for i in $(seq 1 "$ADAPTERS"); do
            printf '[[adapters]]\nid = "adapter-%s"\nmodel = "bench-model"\npath = "%s"\n' \
                "$i" "$WORKDIR/adapter-$i.gguf"
        done
        echo "[[tenants]]"
        echo "id = \"bench\""
        echo "keys = [\"$(target/release/gateway keys hash sk-bench)\"]"
    } >"$WORKDIR/gateway.toml"
    RUST_LOG=warn target/release/gateway serve --config "$WORKDIR/gateway.toml" \
        >"$WORKDIR/gateway.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "http://127.0.0.1:$1/ready"
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

scenario() { # server mix: writes the scenario, STREAMS/ADAPTERS clients per adapter (or base)
    local per=$((STREAMS / ADAPTERS))
    cat <<EOF
model = "bench-model"
endpoint = "completions"
stream = true
ignore_eos = true
temperature = 0.0
seed = 7
stop = { requests = $((STREAMS * 2)), duration_secs = 900 }
EOF
    for i in $(seq 1 "$ADAPTERS"); do
        echo "[[tenants]]"
        echo "label = \"stream-group-$i\""
        echo "api_key = \"env:BENCH_KEY\""
        echo "arrival = { kind = \"closed_loop\", concurrency = $per }"
        echo "prompts = { kind = \"synthetic\", tokens = $PROMPT_WORDS }"
        echo "max_tokens = $TOKENS"
        case "$1:$2" in
            gateway:lora) echo "model = \"bench-model:adapter-$i\"" ;;
            llama:lora) echo "extra_body = { lora = [{ id = $((i - 1)), scale = 1.0 }] }" ;;
        esac
    done
}

measure() { # server mix
    local port report
    port=$(free_port)
    report="$REPORTS/lora-$1-$2-r$ROUND.json"
    scenario "$1" "$2" >"$WORKDIR/scenario.toml"
    "start_$1" "$port"
    BENCH_KEY=sk-bench target/release/loadtest run --url "http://127.0.0.1:$port" \
        --scenario "$WORKDIR/scenario.toml" --out "$report" >/dev/null
    if [[ "$1:$2" = gateway:lora ]]; then
        # Every adapter must have been loaded: a misnamed one would have failed its requests.
        loaded=$(curl -s "http://127.0.0.1:$port/metrics" | grep -c '^gateway_adapter_loaded{.*} 1' || true)
        [[ "$loaded" = "$ADAPTERS" ]] || log "only $loaded of $ADAPTERS adapters loaded"
    fi
    stop_server
    echo "$report"
}

ROWS=$WORKDIR/rows.tsv
: >"$ROWS"
for ROUND in $(seq 1 "$ROUNDS"); do
    for run in llama:base llama:lora gateway:base gateway:lora; do
        log "round $ROUND: ${run/:/ }"
        printf '%s\t%s\n' "$run" "$(measure "${run%%:*}" "${run##*:}")" >>"$ROWS"
    done
done

python3 - "$ROWS" "$ADAPTERS" "$RANK" "$STREAMS" <<'EOF'
import json, statistics, sys
rows, adapters, rank, streams = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
runs = {}
print(f"{'run':<14} {'ok/sent':>8} {'tok/s':>8} {'TTFT p50':>9} {'ITL p50':>8} {'ITL p99':>8}")
for line in open(rows):
    run, path = line.split()
    r = json.load(open(path))
    o = r["overall"]
    ok = sum(1 for q in r["requests"] if q["outcome"] == "ok")
    runs.setdefault(run, []).append(o["output_throughput"])
    print(f"{run:<14} {ok:>4}/{o['sent']:<3} {o['output_throughput']:>8.1f} "
          f"{o['ttft_ms']['p50'] or 0:>9.0f} {o['itl_ms']['p50'] or 0:>8.1f} {o['itl_ms']['p99'] or 0:>8.1f}")
med = {k: statistics.median(v) for k, v in runs.items()}
print(f"\nmedian tok/s at {streams} streams over {adapters} rank-{rank} adapters:")
for k, v in med.items():
    print(f"  {k:<14} {v:8.1f}")
print(f"gateway lora / gateway base: {med['gateway:lora'] / med['gateway:base']:.2f}  (target >= 0.8)")
print(f"gateway lora / llama.cpp lora: {med['gateway:lora'] / med['llama:lora']:.2f}  (target >= 1.5)")
print(f"llama.cpp lora / llama.cpp base: {med['llama:lora'] / med['llama:base']:.2f}")
EOF

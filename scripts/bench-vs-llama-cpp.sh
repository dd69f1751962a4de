#!/usr/bin/env bash
# Side by side on one machine: llama.cpp's `llama-server` and this gateway, the same GGUF, the
# same streaming client (our load-test harness), prompts and settings, one server after the other
# at each concurrency (llama.cpp first).
#
# Settings: greedy (temperature 0), 128 tokens with end-of-sequence ignored, /v1/completions,
# 16 slots (our `max_running`), 2 threads, an 8192-position KV cache shared by all slots, prompt
# caching off in llama.cpp (we have none). Then the prefill test: one request at a time with a
# ~512-token prompt and 1 output token, TTFT = prefill time.
#
# llama-server is built from the llama.cpp source that the PyPI sdist of llama-cpp-python ships
# (cmake and ninja from PyPI too), with the SIMD levels this CPU has named explicitly: a native
# build dies with "Illegal instruction" on some of these VMs. It is built once into $BENCH_DIR
# and never committed. LLAMA_SERVER=/path/to/llama-server skips the build.
#
# Environment: CONCURRENCY ("1 4 16 64"), TOKENS (128), PROMPT_WORDS (28, about 38 tokens),
# PREFILL_WORDS (380, about 512 tokens), THREADS (2), SLOTS (16), BENCH_DIR
# (~/.cache/gateway-bench), ROUNDS (1: how many times the whole comparison is repeated),
# SKIP_BUILD (1: use the release binaries already in target/release, built as they were),
# MODEL (a GGUF file; default the embedded SmolLM2 Q4_1), MODEL_ID (the id both servers give
# it). `scripts/oracles/make_tiny_models.py DIR --1b` writes the ~1B random-weight models and
# llama.cpp's llama-quantize (built by scripts/lib/llama-cpp.sh) makes K-quants of any file.
# Prints one table, then the single-stream decode's bytes per step (the file's tensors a step
# reads) over its step time, against the machine's read bandwidth (cpu_kernels' `read_bandwidth`
# example, one thread and the engine's threads); reports (JSON) stay in $BENCH_DIR/reports.
#
# BASELINE_BIN=/path/to/gateway: an A/B of two builds of ours instead (e.g. the commit before a
# change, built in a worktree): that binary takes llama.cpp's place, llama.cpp is not built, and
# the runs alternate A B A B; the table ends with each row's medians over the rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CONCURRENCY=${CONCURRENCY:-"1 4 16 64"}
TOKENS=${TOKENS:-128}
PROMPT_WORDS=${PROMPT_WORDS:-28}
PREFILL_WORDS=${PREFILL_WORDS:-380}
THREADS=${THREADS:-2}
SLOTS=${SLOTS:-16}
ROUNDS=${ROUNDS:-1}
BENCH_DIR=${BENCH_DIR:-$HOME/.cache/gateway-bench}
REPORTS=$BENCH_DIR/reports
mkdir -p "$BENCH_DIR" "$REPORTS"

log() { echo "[bench] $*" >&2; }


# shellcheck source=lib/llama-cpp.sh
source "$ROOT/scripts/lib/llama-cpp.sh"
# shellcheck source=lib/ports.sh
source "$ROOT/scripts/lib/ports.sh"

build_llama_server() {
    if [[ -n "${LLAMA_SERVER:-}" ]]; then
        echo "$LLAMA_SERVER"
        return
    fi
    echo "$(build_llama_cpp llama-server)/llama-server"
}


scenario() { # file concurrency requests words max_tokens
    cat >"$1" <<EOF
model = "$MODEL_ID"
endpoint = "completions"
stream = true
ignore_eos = true
temperature = 0.0
seed = 7
stop = { requests = $3, duration_secs = 900 }

[[tenants]]
label = "bench"
api_key = "env:BENCH_KEY"
arrival = { kind = "closed_loop", concurrency = $2 }
prompts = { kind = "synthetic", tokens = $4 }
max_tokens = $5
EOF
}

log "building the gateway and the load-test harness (release)"
[[ "${SKIP_BUILD:-0}" = 1 ]] || cargo build --release -q -p gateway -p loadtest
GATEWAY_BIN=target/release/gateway
BASELINE_BIN=${BASELINE_BIN:-}
if [[ -n "$BASELINE_BIN" ]]; then
    A=baseline
    LLAMA_BIN="(not used: A/B against $BASELINE_BIN)"
else
    A=llama
    LLAMA_BIN=$(build_llama_server)
fi
DEFAULT_GGUF="${GATEWAY_CACHE_DIR:-$HOME/.cache/gateway}/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF=${MODEL:-$DEFAULT_GGUF}
MODEL_ID=${MODEL_ID:-$([[ $GGUF == "$DEFAULT_GGUF" ]] && echo smollm2-135m-instruct || echo bench-model)}

WORKDIR=$(mktemp -d)
SERVER_PID=""
cleanup() {
    [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORKDIR"
}
trap cleanup EXIT

start_llama() { # port
    "$LLAMA_BIN" -m "$GGUF" --host 127.0.0.1 --port "$1" -c 8192 -np "$SLOTS" -kvu \
        -t "$THREADS" -tb "$THREADS" --no-cache-prompt --cache-ram 0 --no-webui \
        -a "$MODEL_ID" >"$WORKDIR/llama.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "http://127.0.0.1:$1/health"
}

start_baseline() { # port
    GATEWAY_BIN="$BASELINE_BIN" start_gateway "$1"
}

start_gateway() { # port
    # A ledger per start: an older build (BASELINE_BIN) cannot open a ledger a newer one migrated.
    cat >"$WORKDIR/gateway.toml" <<EOF
listen = "127.0.0.1:$1"
[engine]
threads = $THREADS
[ledger]
path = "$WORKDIR/usage-$1.db"
[[models]]
id = "$MODEL_ID"
path = "$GGUF"
max_running = $SLOTS
kv_cache_tokens = 8192
[[tenants]]
id = "bench"
keys = ["$(target/release/gateway keys hash sk-bench)"]
EOF
    RUST_LOG=warn "$GATEWAY_BIN" serve --config "$WORKDIR/gateway.toml" >"$WORKDIR/gateway.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "http://127.0.0.1:$1/ready"
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

run_client() { # port scenario report
    BENCH_KEY=sk-bench target/release/loadtest run --url "http://127.0.0.1:$1" \
        --scenario "$2" --out "$3" >/dev/null
}

measure() { # server label concurrency requests words max_tokens
    local port report
    port=$(free_port)
    report="$REPORTS/$2-c$3-w$5-t$6-r$ROUND.json"
    scenario "$WORKDIR/scenario.toml" "$3" "$4" "$5" "$6"
    "start_$1" "$port"
    run_client "$port" "$WORKDIR/scenario.toml" "$report"
    stop_server
    echo "$report"
}

if [[ ! -f "$GGUF" && "$GGUF" == "$DEFAULT_GGUF" ]]; then
    log "fetching the default model (the gateway does it on its first start)"
    port=$(free_port)
    GATEWAY_DEMO_KEY=sk-bench target/release/gateway serve --listen "127.0.0.1:$port" \
        >"$WORKDIR/fetch.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "http://127.0.0.1:$port/ready"
    stop_server
fi
log "model: $GGUF; llama-server: $LLAMA_BIN"

ROWS="$WORKDIR/rows.tsv"
: >"$ROWS"
for ROUND in $(seq 1 "$ROUNDS"); do
    for c in $CONCURRENCY; do
        requests=$((c * 2 > 8 ? c * 2 : 8))
        log "round $ROUND, concurrency $c: $A"
        a=$(measure "$A" "$A" "$c" "$requests" "$PROMPT_WORDS" "$TOKENS")
        log "round $ROUND, concurrency $c: gateway"
        b=$(measure gateway gateway "$c" "$requests" "$PROMPT_WORDS" "$TOKENS")
        printf 'c=%s\t%s\t%s\n' "$c" "$a" "$b" >>"$ROWS"
    done
    log "round $ROUND, prefill: $A"
    a=$(measure "$A" "$A" 1 6 "$PREFILL_WORDS" 1)
    log "round $ROUND, prefill: gateway"
    b=$(measure gateway gateway 1 6 "$PREFILL_WORDS" 1)
    printf 'prefill\t%s\t%s\n' "$a" "$b" >>"$ROWS"
done

# The machine's read bandwidth (one thread, the engine's threads), for the decode rows' figure
# of bytes streamed per step / step time.
BANDWIDTH=$(cargo run --release -q -p cpu_kernels --example read_bandwidth 2>/dev/null | tail -1 || true)
python3 -m pip install -q "gguf==0.19.0" "numpy<3" 2>/dev/null || true
STEP_BYTES=$(python3 - "$GGUF" <<'EOF' || echo 0
import sys
import gguf
r = gguf.GGUFReader(sys.argv[1])
names = {t.name for t in r.tensors}
# A decode step reads every matrix once, and the embedding table as the output head only
# when the file ties them (one row of it otherwise).
print(sum(int(t.n_bytes) for t in r.tensors
          if t.name != "token_embd.weight" or "output.weight" not in names))
EOF
)

python3 - "$ROWS" "$A" "$STEP_BYTES" "$BANDWIDTH" <<'EOF'
import json, statistics, sys
A = "llama.cpp" if sys.argv[2] == "llama" else sys.argv[2]
def load(path):
    r = json.load(open(path))
    o = r["overall"]
    ok = [q for q in r["requests"] if q["outcome"] == "ok"]
    prompt = sum(q["prompt_tokens"] for q in ok) / max(len(ok), 1)
    return o, prompt, len(ok), o["sent"]
def f(v, d=1):
    return "-" if v is None else f"{v:.{d}f}"
print(f"{'run':<8} {'server':<9} {'ok/sent':>8} {'prompt':>6} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'prefill tok/s':>13}")
for line in open(sys.argv[1]):
    label, a, b = line.split()
    results = {}
    for name, path in ((A, a), ("gateway", b)):
        o, prompt, ok, sent = load(path)
        results[name] = (o, prompt)
        prefill = prompt / (o["ttft_ms"]["p50"] / 1000) if label == "prefill" and o["ttft_ms"]["p50"] else None
        print(f"{label:<8} {name:<9} {ok:>4}/{sent:<3} {prompt:>6.0f} {o['output_throughput']:>8.1f} "
              f"{f(o['ttft_ms']['p50'],0):>9} {f(o['ttft_ms']['p99'],0):>9} {f(o['itl_ms']['p50']):>8} "
              f"{f(o['itl_ms']['p99']):>8} {f(prefill,0):>13}")
    (oa, _), (ob, _) = results[A], results["gateway"]
    ratio = lambda x, y: "-" if not x or not y else f"{y / x:.2f}"
    print(f"{label:<8} {'ratio':<9} {'':>8} {'':>6} {ratio(oa['output_throughput'], ob['output_throughput']):>8} "
          f"{ratio(oa['ttft_ms']['p50'], ob['ttft_ms']['p50']):>9} {ratio(oa['ttft_ms']['p99'], ob['ttft_ms']['p99']):>9} "
          f"{ratio(oa['itl_ms']['p50'], ob['itl_ms']['p50']):>8} {ratio(oa['itl_ms']['p99'], ob['itl_ms']['p99']):>8}")
medians = {}
for line in open(sys.argv[1]):
    label, a, b = line.split()
    for name, path in ((A, a), ("gateway", b)):
        o = load(path)[0]
        m = medians.setdefault((label, name), {"tok/s": [], "TTFT p50": [], "ITL p50": []})
        m["tok/s"].append(o["output_throughput"])
        m["TTFT p50"].append(o["ttft_ms"]["p50"] or 0)
        m["ITL p50"].append(o["itl_ms"]["p50"] or 0)
print()
print(f"medians over the rounds: {'run':<8} {'server':<9} {'tok/s':>8} {'TTFT p50':>9} {'ITL p50':>8}")
for (label, name), m in medians.items():
    med = {k: statistics.median(v) for k, v in m.items()}
    print(f"{'':<24}{label:<8} {name:<9} {med['tok/s']:>8.1f} {med['TTFT p50']:>9.1f} {med['ITL p50']:>8.2f}")
step_bytes, bandwidth = int(sys.argv[3] or 0), sys.argv[4]
if step_bytes:
    print()
    print(f"single-stream decode: {step_bytes / 1e6:.0f} MB of the file's tensors per step; {bandwidth}")
    peak = None
    try:
        peak = float(bandwidth.rsplit(" ", 1)[-1])
    except ValueError:
        pass
    for (label, name), m in medians.items():
        itl = statistics.median(m["ITL p50"])
        if label == "c=1" and itl:
            rate = step_bytes / (itl / 1000) / 1e9
            share = f" ({100 * rate / peak:.0f} % of the threads' read bandwidth)" if peak else ""
            print(f"  {name:<9} {rate:5.1f} GB/s at ITL p50 {itl:.1f} ms{share}")
EOF

#!/usr/bin/env bash
# The gateway's hot path (issue 19) against LiteLLM's proxy and the bare mock upstream, in one
# run on one machine: nginx (Debian's package) serves a fixed 16-token chat SSE stream with its
# usage (12 prompt tokens); the gateway (authentication, all four quotas, metrics and the usage
# ledger on) and LiteLLM's proxy (pinned from PyPI; 2 workers, no database, logging off) both
# sit in front of it as a remote pool / an OpenAI-compatible model; `oha` (crates.io) drives
# each target in turn with the same streamed chat request:
#   - peak: 64 connections, as fast as they go: the rate, and the server's CPU per request;
#   - fixed rates ($RATES, req/s): p99 latency, the share served, and CPU per request; the
#     added latency is a target's p99 minus the mock's at the same rate.
# Every measurement runs the targets one after the other (mock, gateway, LiteLLM), so drift of
# the shared machine shows up between rounds, not between targets. While one target is
# measured, the other proxies are stopped (SIGSTOP, their whole process trees; the mock runs
# for all): idle, LiteLLM's workers still wake up often enough to take cycles and caches from
# whatever runs beside them (the gateway's CPU per request at 50 req/s read 0.56 ms with LiteLLM
# idling beside it, 0.38 without). CPU per request is the server's user + system time (all its
# processes) over the requests it answered.
#
#   scripts/bench-gateway-vs-litellm.sh [OUT_DIR]     (default target/bench/gateway-vs-litellm)
#
# DURATION (10) seconds per measurement; RATES ("25 50 250 1000 2000 5000"); LITELLM_RATES
# ("25 50": LiteLLM cannot sustain 100 here, and a run it cannot keep up with only queues);
# TARGETS ("mock gateway gateway-1w litellm"; gateway-1w is the gateway with `[server]
# worker_threads = 1`, the load tool having the other core); ROUNDS (1). Tools go to target/bench-tools (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench/gateway-vs-litellm}
DURATION=${DURATION:-10}
RATES=${RATES:-25 50 250 1000 2000 5000}
LITELLM_RATES=${LITELLM_RATES:-25 50}
TARGETS=${TARGETS:-mock gateway gateway-1w litellm}
ROUNDS=${ROUNDS:-1}
LITELLM_VERSION=1.106.2
OHA_VERSION=1.15.0
TOOLS=$PWD/target/bench-tools
mkdir -p "$OUT" "$TOOLS"
OUT=$(cd "$OUT" && pwd)
cargo build --release --locked -p gateway >&2
BIN=target/release
. scripts/lib/servers.sh

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx >/dev/null
  $sudo systemctl disable --now nginx >/dev/null 2>&1 || true
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
OHA=$TOOLS/bin/oha
[ -x "$OHA" ] || cargo install --locked --quiet oha --version "$OHA_VERSION" --root "$TOOLS" >&2
LITELLM=$TOOLS/litellm-venv/bin/litellm
if [ ! -x "$LITELLM" ]; then
  python3 -m venv "$TOOLS/litellm-venv"
  "$TOOLS/litellm-venv/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION" >&2
fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
MOCK_PORT=$(free_port)
GATEWAY_PORT=$(free_port)
LITELLM_PORT=$(free_port)
KEY=sk-bench-hot-path

# The mock's stream: a role chunk, 16 one-token chunks, the finish, the usage, [DONE].
BODY=$(python3 - <<'PY'
import json
def chunk(choices, **extra):
    return json.dumps({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
                       "model": "mock", "choices": choices, **extra}, separators=(",", ":"))
events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
events += [chunk([{"index": 0, "delta": {"content": f" w{i}"}, "finish_reason": None}]) for i in range(16)]
events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
events.append(chunk([], usage={"prompt_tokens": 12, "completion_tokens": 16, "total_tokens": 28}))
body = "".join(f"data: {e}\n\n" for e in events) + "data: [DONE]\n\n"
print(body.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n"), end="")
PY
)
mkdir -p "$OUT/nginx"
cat >"$OUT/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $OUT/nginx/body;
  proxy_temp_path $OUT/nginx/proxy;
  fastcgi_temp_path $OUT/nginx/fastcgi;
  uwsgi_temp_path $OUT/nginx/uwsgi;
  scgi_temp_path $OUT/nginx/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$MOCK_PORT;
    location = /v1/chat/completions { default_type text/event-stream; return 200 '$BODY'; }
    location = /v1/models { default_type application/json; return 200 '{"object":"list","data":[{"id":"mock","object":"model"}]}'; }
  }
}
EOF
"$NGINX" -c "$OUT/nginx/nginx.conf" -p "$OUT/nginx" >"$OUT/nginx/stdout.log" 2>&1 &
pids+=($!)
MOCK_PID=$!
until curl -sf "http://127.0.0.1:$MOCK_PORT/v1/models" >/dev/null; do sleep 0.1; done

# gateway_config PORT [SERVER_LINES]
gateway_config() {
  cat <<EOF
listen = "127.0.0.1:$1"

[server]
${2:-}

[[pools]]
name = "mock"
kind = "remote"
urls = ["http://127.0.0.1:$MOCK_PORT"]

[[models]]
id = "mock"
pools = ["mock"]

$(bench_tenant bench "$(key_digest $KEY)")
EOF
}
# start_gateway NAME PORT [SERVER_LINES]
start_gateway() {
  gateway_config "$2" "${3:-}" >"$OUT/$1.toml"
  rm -rf "$OUT/$1-data"
  GATEWAY_DATA_DIR="$OUT/$1-data" RUST_LOG=warn \
    start_server "$OUT/$1.log" "$BIN/gateway" serve --config "$OUT/$1.toml"
  until curl -sf "http://127.0.0.1:$2/ready" >/dev/null; do sleep 0.2; done
}
start_gateway gateway "$GATEWAY_PORT"
GATEWAY_PID=${pids[-1]}
# The same gateway with one runtime worker: the load tool has the other core.
GATEWAY1_PORT=$(free_port)
GATEWAY1_PID=""
if [[ " $TARGETS " == *" gateway-1w "* ]]; then
  start_gateway gateway-1w "$GATEWAY1_PORT" "worker_threads = 1"
  GATEWAY1_PID=${pids[-1]}
fi

cat >"$OUT/litellm.yaml" <<EOF
model_list:
  - model_name: mock
    litellm_params:
      model: openai/mock
      api_base: http://127.0.0.1:$MOCK_PORT/v1
      api_key: unused
litellm_settings:
  set_verbose: false
  turn_off_message_logging: true
general_settings:
  master_key: $KEY
EOF
if [[ " $TARGETS " == *" litellm "* ]]; then
  LITELLM_LOG=ERROR "$LITELLM" --config "$OUT/litellm.yaml" --host 127.0.0.1 --port "$LITELLM_PORT" \
    --num_workers 2 >"$OUT/litellm.log" 2>&1 &
  pids+=($!)
  LITELLM_PID=$!
  for _ in $(seq 600); do
    curl -sf -H "Authorization: Bearer $KEY" "http://127.0.0.1:$LITELLM_PORT/v1/models" >/dev/null && break
    sleep 0.5
  done
fi

url_of() {
  case $1 in
    mock) echo "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" ;;
    gateway) echo "http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions" ;;
    gateway-1w) echo "http://127.0.0.1:$GATEWAY1_PORT/v1/chat/completions" ;;
    litellm) echo "http://127.0.0.1:$LITELLM_PORT/v1/chat/completions" ;;
  esac
}
pid_of() {
  case $1 in
    mock) echo "$MOCK_PID" ;; gateway) echo "$GATEWAY_PID" ;; gateway-1w) echo "$GATEWAY1_PID" ;;
    litellm) echo "$LITELLM_PID" ;;
  esac
}
# tree PID: PID and every process below it.
tree() {
  local all=$1 frontier=$1 next
  while [ -n "$frontier" ]; do
    next=""
    for p in $frontier; do next="$next $(pgrep -P "$p" || true)"; done
    frontier=$(echo $next)
    all="$all $frontier"
  done
  echo $all
}
# cpu_ticks PID: user + system clock ticks of PID and every process below it.
cpu_ticks() {
  for p in $(tree "$1"); do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || true; done | awk '{s += $1} END {print s + 0}'
}
# pause_others TARGET SIGNAL: SIGSTOP or SIGCONT to every proxy but TARGET (never the mock).
pause_others() {
  local other
  for other in $TARGETS; do
    if [ "$other" = mock ] || [ "$other" = "$1" ]; then continue; fi
    kill -"$2" $(tree "$(pid_of "$other")") 2>/dev/null || true
  done
}
# A stopped server would not hear the TERM that stops it: everyone runs again first.
trap 'pause_others none CONT; stop_servers' EXIT
REQUEST='{"model": "mock", "messages": [{"role": "user", "content": "Say something short, please."}], "stream": true, "max_tokens": 16}'

# measure TARGET NAME OHA_ARGS...: one oha run; its JSON and the server's CPU ticks.
measure() {
  local target=$1 name=$2; shift 2
  local before after
  pause_others "$target" STOP
  before=$(cpu_ticks "$(pid_of "$target")")
  "$OHA" --no-tui --output-format json -z "${DURATION}s" -m POST \
    -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" -d "$REQUEST" \
    "$@" "$(url_of "$target")" >"$OUT/$target.$name.json" 2>"$OUT/$target.$name.err" || true
  after=$(cpu_ticks "$(pid_of "$target")")
  pause_others "$target" CONT
  echo "$((after - before))" >"$OUT/$target.$name.cpu"
  echo "[$target $name] done" >&2
}

for round in $(seq "$ROUNDS"); do
  for target in $TARGETS; do measure "$target" "peak.r$round" -c 64; done
  for rate in $RATES; do
    for target in $TARGETS; do
      if [ "$target" = litellm ] && [[ " $LITELLM_RATES " != *" $rate "* ]]; then continue; fi
      # Connections enough that the rate, not the connections, limits (oha waits otherwise).
      measure "$target" "rate$rate.r$round" -q "$rate" --latency-correction -c $((rate / 10 + 16))
    done
  done
done
stop_servers

python3 - "$OUT" "$DURATION" "$(getconf CLK_TCK)" "$RATES" "$TARGETS" "$ROUNDS" <<'PY'
import json, os, sys
out, duration, hz, rates, targets, rounds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split(), sys.argv[5].split(), int(sys.argv[6])
def load(target, name):
    runs = []
    for r in range(1, rounds + 1):
        path = os.path.join(out, f"{target}.{name}.r{r}.json")
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            continue
        data = json.load(open(path))
        ticks = float(open(os.path.join(out, f"{target}.{name}.r{r}.cpu")).read())
        ok = data.get("statusCodeDistribution", {}).get("200", 0)
        runs.append({"rps": ok / duration, "ok": ok,
                     "p99": data["latencyPercentiles"]["p99"], "cpu_ms": ticks / hz * 1e3 / max(ok, 1)})
    if not runs:
        return None
    mid = lambda k: sorted(r[k] for r in runs)[len(runs) // 2]
    return {k: mid(k) for k in runs[0]}
names = {"mock": "mock (nginx)", "gateway": "gateway", "gateway-1w": "gateway, 1 worker", "litellm": "LiteLLM"}
print("| figure | " + " | ".join(names[t] for t in targets) + " |")
print("|---|" + "---|" * len(targets))
row = lambda label, cells: print(f"| {label} | " + " | ".join(cells) + " |")
peak = {t: load(t, "peak") for t in targets}
row("max rate, 64 connections (req/s)", [f"{p['rps']:,.0f}" if p else "-" for p in peak.values()])
row("CPU per request at peak (ms)", [f"{p['cpu_ms']:.3f}" if p else "-" for p in peak.values()])
for rate in rates:
    runs = {t: load(t, f"rate{rate}") for t in targets}
    mock = runs.get("mock")
    served = lambda r: f"{100 * r['ok'] / (float(rate) * duration):.1f} %"
    added = lambda r: "-" if not (r and mock and r["p99"] is not None and mock["p99"] is not None) else f"{(r['p99'] - mock['p99']) * 1e3:.2f}"
    row(f"p99 added latency at {rate} req/s (ms)", ["(base)" if t == "mock" else added(r) if r else "not run" for t, r in runs.items()])
    row(f"served at {rate} req/s", [served(r) if r else "not run" for r in runs.values()])
    row(f"CPU per request at {rate} req/s (ms)", [f"{r['cpu_ms']:.3f}" if r else "not run" for r in runs.values()])
PY

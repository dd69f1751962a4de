#!/usr/bin/env bash
# The prefix cache over HTTP (issue 18): the real gateway on the default model, driven by the
# load-test harness, with `prefix_cache` on and off in turn (A B A B), on two scenarios of 16
# closed-loop streams: a shared 400-token system prompt before short questions, and 6-turn
# conversations. Reports (JSON) go to OUT_DIR; a table of TTFT and throughput, on against off,
# is printed.
#
#   scripts/bench-prefix-cache.sh [OUT_DIR]        (default target/bench-prefix-cache)
#
# ROUNDS (2) repeats the four runs; SCENARIOS picks a subset (shared-prefix multi-turn);
# DURATION overrides each run's seconds (scenarios: 60).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench-prefix-cache}
ROUNDS=${ROUNDS:-2}
SCENARIOS=${SCENARIOS:-shared-prefix multi-turn}
mkdir -p "$OUT"
cargo build --release --locked -p gateway -p loadtest >&2
BIN=target/release
. scripts/lib/servers.sh

export PREFIX_BENCH_KEY=sk-bench-prefix
# config on|off
config() {
  cat <<TOML
[ledger]
enabled = false

[[models]]
id = "smollm2-135m-instruct"
max_running = 16
prefix_cache = $([ "$1" = on ] && echo true || echo false)

$(bench_tenant agents "$(key_digest $PREFIX_BENCH_KEY)")
TOML
}

# run NAME CACHE SCENARIO
run() {
  local name=$1 cache=$2 scenario=$3
  config "$cache" > "$OUT/$name.toml"
  if [ -n "${DURATION:-}" ]; then
    sed "s/^stop = .*/stop = { duration_secs = $DURATION }/" "$scenario" > "$OUT/$name.scenario.toml"
  else
    cp "$scenario" "$OUT/$name.scenario.toml"
  fi
  stop_servers
  START_WAIT_SECS=300 start_server "$OUT/$name.gateway.log" "$BIN/gateway" serve --config "$OUT/$name.toml" --listen 127.0.0.1:0
  local addr; addr=$(listening_address "$OUT/$name.gateway.log")
  until curl -sf "http://$addr/ready" >/dev/null; do sleep 0.5; done
  "$BIN/loadtest" run --quiet --url "http://$addr" --scenario "$OUT/$name.scenario.toml" --out "$OUT/$name.json" >&2
  curl -s "http://$addr/metrics" | grep -E '^gateway_engine_(tenant_)?prefix_cache|^gateway_engine_kv_blocks_cached' > "$OUT/$name.metrics.txt" || true
  stop_servers
}

rm -f "$OUT"/*.r*.json
for round in $(seq "$ROUNDS"); do
  for s in $SCENARIOS; do
    for cache in on off; do
      run "$s.$cache.r$round" "$cache" "loadtest/scenarios/$s-16.toml"
    done
  done
done

python3 - "$OUT" "$SCENARIOS" <<'PY'
import glob, json, os, sys
out, scenarios = sys.argv[1], sys.argv[2].split()
sys.path.insert(0, "scripts/lib")
from bench_stats import pct
print("| scenario | cache | rounds | ok | prompt tok (mean) | cached | TTFT p50 ms | TTFT p90 ms | ITL p50 ms | output tok/s |")
print("|---|---|---|---|---|---|---|---|---|---|")
figures = {}
for s in scenarios:
    for cache in ("on", "off"):
        runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, f"{s}.{cache}.r*.json")))]
        if not runs: continue
        reqs = [q for r in runs for q in r["requests"] if q.get("ttft_ms") is not None]
        ttft = [q["ttft_ms"] for q in reqs]
        itl = [g for q in reqs for g in q["itl_ms"]]
        prompt = sum(q["prompt_tokens"] for q in reqs) / max(1, len(reqs))
        cached = sum(q.get("cached_tokens", 0) for q in reqs) / max(1, sum(q["prompt_tokens"] for q in reqs))
        tput = sum(r["overall"]["output_throughput"] for r in runs) / len(runs)
        figures[(s, cache)] = (pct(ttft, 50), tput)
        f = lambda v: "-" if v is None else f"{v:.1f}"
        print(f"| {s} | {cache} | {len(runs)} | {len(reqs)} | {prompt:.0f} | {cached:.0%} | {f(pct(ttft,50))} | {f(pct(ttft,90))} | {f(pct(itl,50))} | {tput:.1f} |")
print()
for s in scenarios:
    if (s, "on") in figures and (s, "off") in figures:
        (t_on, x_on), (t_off, x_off) = figures[(s, "on")], figures[(s, "off")]
        print(f"{s}: TTFT p50 on/off = {t_on / t_off:.3f} (goal <= 0.25); throughput on/off = {x_on / x_off:.2f}x (goal >= 1.5)")
PY

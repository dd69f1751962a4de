#!/usr/bin/env bash
# Tenant isolation over HTTP (issue 15): the real gateway on the default model, driven by the
# load-test harness. Runs, 40 s each: the quiet tenant alone, the noisy tenant alone, both with
# the noisy one in the `batch` class, both in the same class; then the weighted split (weights
# 1 and 3, both backlogged, 60 s). Reports (JSON) go to OUT_DIR; a summary table is printed.
#
#   scripts/bench-isolation.sh [OUT_DIR]        (default target/bench-isolation)
#
# BEFORE_BIN=path/to/an/older/gateway adds the same-class run on that binary (the scheduler
# before this work); MAX_RUNNING (16) sizes the batch; RUNS picks a subset (space-separated:
# quiet-alone noisy-alone batch batch-nopause batch-strict same-class before weighted;
# batch-nopause is the batch run with `pause_for_higher_class = false`, batch-strict with
# `lower_class_step_tokens = 0`); ROUNDS (1) repeats the chosen runs in turn,
# A B A B, and the table pools each run's requests over the rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench-isolation}
MAX_RUNNING=${MAX_RUNNING:-16}
RUNS=${RUNS:-quiet-alone noisy-alone batch same-class before weighted}
ROUNDS=${ROUNDS:-1}
mkdir -p "$OUT"
cargo build --release --locked -p gateway -p loadtest >&2
BIN=target/release
. scripts/lib/servers.sh

export QUIET_KEY=sk-bench-quiet NOISY_KEY=sk-bench-noisy LIGHT_KEY=sk-bench-light HEAVY_KEY=sk-bench-heavy
# config NOISY_PRIORITY [PAUSE]: two tenants quiet and noisy (and light/heavy for the split).
config() {
  local noisy_extra=""
  [ "$1" = batch ] && noisy_extra='priority = "batch"'
  local model_extra=""
  [ "${2:-}" = nopause ] && model_extra='pause_for_higher_class = false'
  [ "${2:-}" = strict ] && model_extra='lower_class_step_tokens = 0'
  cat <<TOML
[ledger]
enabled = false

[[models]]
id = "smollm2-135m-instruct"
max_running = $MAX_RUNNING
$model_extra

[[tenants]]
id = "quiet"
keys = ["$(key_digest $QUIET_KEY)"]

[[tenants]]
id = "noisy"
keys = ["$(key_digest $NOISY_KEY)"]
$noisy_extra

[[tenants]]
id = "light"
keys = ["$(key_digest $LIGHT_KEY)"]
weight = 1

[[tenants]]
id = "heavy"
keys = ["$(key_digest $HEAVY_KEY)"]
weight = 3
TOML
}

# run NAME GATEWAY_BINARY NOISY_PRIORITY SCENARIO [PAUSE]
run() {
  local name=$1 gateway=$2 priority=$3 scenario=$4
  config "$priority" "${5:-}" > "$OUT/$name.toml"
  stop_servers
  START_WAIT_SECS=300 start_server "$OUT/$name.gateway.log" "$gateway" serve --config "$OUT/$name.toml" --listen 127.0.0.1:0
  local addr; addr=$(listening_address "$OUT/$name.gateway.log")
  until curl -sf "http://$addr/ready" >/dev/null; do sleep 0.5; done
  "$BIN/loadtest" run --quiet --url "http://$addr" --scenario "$scenario" --out "$OUT/$name.json" >&2
  curl -s "http://$addr/metrics" | grep '^gateway_engine_tenant_service_tokens_total' > "$OUT/$name.service.txt" || true
  stop_servers
}

rm -f "$OUT"/*.r*.json
for round in $(seq "$ROUNDS"); do
  for r in $RUNS; do
    case $r in
      quiet-alone) run quiet-alone.r$round "$BIN/gateway" interactive loadtest/scenarios/quiet-alone.toml ;;
      noisy-alone) run noisy-alone.r$round "$BIN/gateway" interactive loadtest/scenarios/noisy-alone.toml ;;
      batch) run batch.r$round "$BIN/gateway" batch loadtest/scenarios/noisy-neighbour.toml ;;
      batch-nopause) run batch-nopause.r$round "$BIN/gateway" batch loadtest/scenarios/noisy-neighbour.toml nopause ;;
      batch-strict) run batch-strict.r$round "$BIN/gateway" batch loadtest/scenarios/noisy-neighbour.toml strict ;;
      same-class) run same-class.r$round "$BIN/gateway" interactive loadtest/scenarios/noisy-neighbour.toml ;;
      before) [ -n "${BEFORE_BIN:-}" ] && run before.r$round "$BEFORE_BIN" interactive loadtest/scenarios/noisy-neighbour.toml ;;
      weighted) run weighted.r$round "$BIN/gateway" interactive loadtest/scenarios/weighted-split.toml ;;
    esac
  done
done

python3 - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
def rounds(name):
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, name + ".r*.json")))]
def load(name):
    r = rounds(name)
    return r[0] if r else None
sys.path.insert(0, "scripts/lib")
from bench_stats import pct
print("| run | tenant | rounds | ok | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | output tok/s |")
print("|---|---|---|---|---|---|---|---|---|")
for name in ["quiet-alone", "noisy-alone", "batch", "batch-nopause", "batch-strict", "same-class", "before", "weighted"]:
    runs = rounds(name)
    if not runs: continue
    for tenant in runs[0]["tenants"]:
        reqs = [q for r in runs for q in r["requests"] if q["tenant"] == tenant and q.get("ttft_ms") is not None]
        ttft = [q["ttft_ms"] for q in reqs]
        itl = [g for q in reqs for g in q["itl_ms"]]
        ok = sum(r["tenants"][tenant]["ok"] for r in runs)
        tput = sum(r["tenants"][tenant]["output_throughput"] for r in runs) / len(runs)
        f = lambda v: "-" if v is None else f"{v:.1f}"
        print(f"| {name} | {tenant} | {len(runs)} | {ok} | {f(pct(ttft,50))} | {f(pct(ttft,99))} | {f(pct(itl,50))} | {f(pct(itl,99))} | {tput:.1f} |")
w = load("weighted")
if w:
    light, heavy = (w["tenants"][t]["total_output_tokens"] for t in ("light", "heavy"))
    # The harness waits for every request, so the backlogs drain after the 60 s: count the
    # tokens each tenant received from 5 s (both backlogged) to 60 s (arrivals stop).
    got = {"light": 0, "heavy": 0}
    for q in w["requests"]:
        if q.get("ttft_ms") is None:
            continue
        t = q["sent_at_ms"] + q["ttft_ms"]
        for gap in [0.0] + q["itl_ms"]:
            t += gap
            if 5e3 <= t < 60e3:
                got[q["tenant"]] += 1
    share = got["heavy"] / max(1, got["light"] + got["heavy"])
    print(f"\nweighted split, tokens received 5-60 s: light {got['light']}, heavy {got['heavy']}: heavy share {share:.3f} (goal 0.75 +- 0.05)")
    print(f"(all output tokens, backlogs drained: light {light}, heavy {heavy})")
    svc = os.path.join(out, "weighted.r1.service.txt")
    if os.path.exists(svc):
        print(open(svc).read())
PY

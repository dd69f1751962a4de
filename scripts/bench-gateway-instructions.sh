#!/usr/bin/env bash
# Instructions the gateway executes per request, counted by valgrind (callgrind) over its
# whole process: the A/B measure of the serving path's cost that the shared build machines'
# timing cannot give (their neighbours move request rates and CPU times by 10-20% between
# minutes; an instruction count does not move). Hardware counters are not exposed on these VMs.
#
#   scripts/bench-gateway-instructions.sh [GATEWAY_BIN ...]   (default: this tree's release build)
#
# For each binary: two runs of the same closed-loop streamed workload against the synthetic
# engine (no model), N1 and N2 requests (defaults 400 and 1600), each from start to a clean
# shutdown; (instructions(N2) - instructions(N1)) / (N2 - N1) is the cost of one request, with
# start-up and shutdown cancelled out. Authentication, all four quotas, metrics and the usage
# ledger are on, as deployed.
#
# CACHE_SIM=1 adds callgrind's cache and branch simulation: instruction-cache (I1mr), data-cache
# (D1mr, D1mw), last-level (ILmr, DLmr, DLmw) misses and mispredicted branches (Bcm, Bim) per
# request, the deterministic stand-ins for what timing would show of code size and layout.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/bench/gateway-instructions}
N1=${N1:-400}
N2=${N2:-1600}
CACHE_SIM=${CACHE_SIM:-0}
SIM=()
[ "$CACHE_SIM" = 1 ] && SIM=(--cache-sim=yes --branch-sim=yes)
mkdir -p "$OUT"
cargo build --release --locked -p gateway -p loadtest --bins >&2
BIN=target/release
. scripts/lib/servers.sh
[ $# -gt 0 ] || set -- "$BIN/gateway"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

KEY=sk-bench-instructions
DIGEST=$(key_digest "$KEY")

run_one() { # binary requests tag
  local bin=$1 n=$2 tag=$3 port=$((9800 + RANDOM % 100))
  cat >"$OUT/$tag.toml" <<TOML
listen = "127.0.0.1:$port"
[[models]]
id = "bench"
kind = "synthetic"
[models.synthetic]
tokens_per_second = 0
$(bench_tenant bench "$DIGEST")
TOML
  cat >"$OUT/$tag-scenario.toml" <<TOML
model = "bench"
endpoint = "completions"
stream = true
stop = { requests = $n }
[[tenants]]
label = "bench"
api_key = "$KEY"
arrival = { kind = "closed_loop", concurrency = 4 }
prompts = { kind = "synthetic", tokens = 64 }
max_tokens = 16
TOML
  rm -rf "$OUT/data-$tag"
  GATEWAY_DATA_DIR="$OUT/data-$tag" RUST_LOG=warn START_WAIT_SECS=120 start_server "$OUT/$tag.log" \
    valgrind --tool=callgrind "${SIM[@]}" --callgrind-out-file="$OUT/$tag.callgrind" \
    "$bin" --config "$OUT/$tag.toml"
  "$BIN/loadtest" run --quiet --url "http://127.0.0.1:$port" --scenario "$OUT/$tag-scenario.toml" \
    --out "$OUT/$tag.json" >/dev/null
  stop_servers
  local ok
  ok=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['overall']['ok'])" "$OUT/$tag.json")
  [ "$ok" = "$n" ] || { echo "$tag: only $ok of $n requests succeeded" >&2; exit 1; }
  # Every event's total, space-separated, in the order of the file's `events:` line.
  grep -E "^(summary|totals):" "$OUT/$tag.callgrind" | head -1 | cut -d' ' -f2-
}

for bin in "$@"; do
  name=$(echo "$bin" | tr '/' '_')
  low=$(run_one "$bin" "$N1" "$name-$N1")
  high=$(run_one "$bin" "$N2" "$name-$N2")
  events=$(grep -E "^events:" "$OUT/$name-$N2.callgrind" | head -1 | cut -d' ' -f2-)
  python3 - "$bin" "$N1" "$N2" "$events" "$low" "$high" <<'PY' | tee -a "$OUT/results.txt"
import sys
bin, n1, n2, events, low, high = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:]
names, lo, hi = events.split(), list(map(int, low.split())), list(map(int, high.split()))
per = {n: (h - l) / (n2 - n1) for n, l, h in zip(names, lo, hi)}
print(f"{bin}: {per['Ir']:,.0f} instructions per request ({lo[0]:,} for {n1}, {hi[0]:,} for {n2})")
if len(names) > 1:
    print("  per request: " + ", ".join(f"{n} {v:,.0f}" for n, v in per.items() if n != "Ir"))
PY
done

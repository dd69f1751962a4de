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
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/bench/gateway-instructions}
N1=${N1:-400}
N2=${N2:-1600}
mkdir -p "$OUT"
cargo build --release --locked -p gateway -p loadtest --bins >&2
BIN=target/release
[ $# -gt 0 ] || set -- "$BIN/gateway"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

KEY=sk-bench-instructions
DIGEST=$("$BIN/gateway" keys hash "$KEY" | tail -1)

run_one() { # binary requests tag
  local bin=$1 n=$2 tag=$3 port=$((9800 + RANDOM % 100))
  cat >"$OUT/$tag.toml" <<TOML
listen = "127.0.0.1:$port"
[[models]]
id = "bench"
kind = "synthetic"
[models.synthetic]
tokens_per_second = 0
[[tenants]]
id = "bench"
keys = ["$DIGEST"]
requests_per_minute = 10000000
tokens_per_minute = 1000000000
max_concurrent = 100000
daily_tokens = 100000000000
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
  GATEWAY_DATA_DIR="$OUT/data-$tag" RUST_LOG=warn valgrind --tool=callgrind \
    --callgrind-out-file="$OUT/$tag.callgrind" "$bin" --config "$OUT/$tag.toml" \
    >"$OUT/$tag.log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do
    grep -q "listening on" "$OUT/$tag.log" && break
    sleep 0.2
  done
  "$BIN/loadtest" run --quiet --url "http://127.0.0.1:$port" --scenario "$OUT/$tag-scenario.toml" \
    --out "$OUT/$tag.json" >/dev/null
  kill -TERM "$pid"
  wait "$pid" || true
  local ok instructions
  ok=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['overall']['ok'])" "$OUT/$tag.json")
  [ "$ok" = "$n" ] || { echo "$tag: only $ok of $n requests succeeded" >&2; exit 1; }
  instructions=$(grep -E "^(summary|totals):" "$OUT/$tag.callgrind" | head -1 | awk '{print $2}')
  echo "$instructions"
}

for bin in "$@"; do
  name=$(echo "$bin" | tr '/' '_')
  low=$(run_one "$bin" "$N1" "$name-$N1")
  high=$(run_one "$bin" "$N2" "$name-$N2")
  python3 -c "import sys; lo, hi, n1, n2 = map(int, sys.argv[2:]); print(f'{sys.argv[1]}: {(hi - lo) / (n2 - n1):,.0f} instructions per request ({lo:,} for {n1}, {hi:,} for {n2})')" \
    "$bin" "$low" "$high" "$N1" "$N2" | tee -a "$OUT/results.txt"
done

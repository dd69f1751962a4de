#!/usr/bin/env bash
# What a grant costs per request: the gateway (control-plane store in SQLite) at 500 requests/s
# of one token each, for a tenant without and with a grant, alternating (A B A B A B); the
# gateway's CPU per request from /proc, the load tool's latency in its logs. $VARIANTS (default
# "store grant grant-nosync"): `store` no grant; `grant` a grant; `grant-nosync` a grant with
# `[control_plane] durability = "process-crash"` (SQLite commits synced at checkpoints).
#
#   scripts/bench-allowances.sh [OUT_DIR]      (default target/bench/allowances)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p gateway -p loadtest --bins >&2
BIN=$PWD/target/release
OUT=${1:-target/bench/allowances}
mkdir -p "$OUT" && cd "$OUT"
KEY=sk-bench-grant-0123456789
DIGEST=$($BIN/gateway keys hash "$KEY" | tail -1)
ADMIN=sk-bench-admin-0123456789
ADIGEST=$($BIN/gateway keys hash "$ADMIN" | tail -1)
cat > scenario.toml <<TOML
model = "bench"
endpoint = "completions"
stream = false
stop = { duration_secs = 15 }
[[tenants]]
label = "bench"
api_key = "$KEY"
arrival = { kind = "poisson", rate = 500.0 }
prompts = { kind = "synthetic", tokens = 16 }
max_tokens = 1
TOML
run() { # variant round
  local variant=$1 round=$2 port=$((9700 + RANDOM % 200))
  rm -rf data-$variant-$round
  cat > gw-$variant.toml <<TOML
listen = "127.0.0.1:$port"
admin_keys = ["$ADIGEST"]
[control_plane]
enabled = true
$([ "$variant" = grant-nosync ] && echo 'durability = "process-crash"')
[[models]]
id = "bench"
kind = "synthetic"
[models.synthetic]
tokens_per_second = 0
[[tenants]]
id = "bench"
keys = ["$DIGEST"]
TOML
  GATEWAY_DATA_DIR=data-$variant-$round RUST_LOG=warn taskset -c 1 $BIN/gateway --config gw-$variant.toml > gw-$variant-$round.log 2>&1 &
  local pid=$!
  until grep -q "listening on" gw-$variant-$round.log; do sleep 0.1; done
  if [ "$variant" != store ]; then
    curl -s -o /dev/null -H "Authorization: Bearer $ADMIN" -H 'content-type: application/json' \
      -d "{\"tenant\":\"bench\",\"unit\":\"tokens\",\"amount\":1000000000000,\"expires_at_ms\":4102444800000}" \
      http://127.0.0.1:$port/admin/grants
  fi
  local before after ok
  before=$(awk '{print $14 + $15}' /proc/$pid/stat)
  taskset -c 0 $BIN/loadtest run --quiet --url http://127.0.0.1:$port --scenario scenario.toml --out $variant-$round.json > lt-$variant-$round.log
  after=$(awk '{print $14 + $15}' /proc/$pid/stat)
  ok=$(python3 -c "import json; r=json.load(open('$variant-$round.json'))['overall']; print(r['ok'])")
  python3 -c "print(f'$variant r$round: {($after - $before) / $(getconf CLK_TCK) / max($ok, 1) * 1e6:.1f} us CPU per request, {$ok} ok')"
  kill $pid; wait $pid 2>/dev/null || true
}
for round in 1 2 3; do
  for variant in ${VARIANTS:-store grant grant-nosync}; do run "$variant" "$round"; done
done

#!/usr/bin/env bash
# Gateway overhead: the same synthetic engine reached through the gateway (auth and quotas on)
# and through the thinnest possible server (gateway/examples/synthetic_floor.rs), driven by the
# load-test harness with the same scenario, one target at a time, in one run on one machine.
#
#   scripts/bench-gateway-overhead.sh [OUT_DIR]     (default target/bench/gateway-overhead)
#
# Two scenarios: `latency` (16 closed-loop clients, 32 tokens paced at 200 tokens/s: the added
# TTFT/ITL/E2E), and `peak` (64 closed-loop clients, 16 unpaced tokens: the peak request rate).
# $VARIANTS names the targets, compared pairwise with the first (default "floor gateway"):
#   floor         the bare server around the engine
#   gateway       the gateway as deployed: auth, quotas, usage ledger (SQLite), metrics
#   gateway-bare  the gateway with the ledger and the per-request metrics off
#   gateway-nosync  the gateway with `[ledger] durability = "process-crash"` (no fsync per commit)
#   gateway-remote  the gateway with the engine in an `engine-worker` process behind a remote pool
#                 (the cost of the extra HTTP hop: routing, SSE parse and re-encode, loopback)
#   gateway-redis the gateway with its quotas counted in Redis (`[quotas] redis_url`, a
#                 redis-server started here on loopback): one admission script and one
#                 settlement script per request
#   gateway-store the gateway with tenants and keys from the control-plane store in SQLite
#                 (`[control_plane] enabled`, seeded from the same [[tenants]]): its cache, key
#                 last-use bookkeeping and version polling are what differs from `gateway`
#   gateway-store-pg  the same with the store in PostgreSQL (a cluster started here on loopback)
#   baseline      the `gateway` variant run by another build, $BASELINE_BIN (e.g. the commit
#                 before a change, built in a worktree): an A/B of two commits in one run
# $SCENARIOS (default "latency peak") picks the scenarios; `rate1k` and `rate5k` are open loop
# (Poisson arrivals at 1000 and 5000 requests/s, one unpaced token each): the per-request
# latency at a fixed rate, for admission cost (VARIANTS="gateway gateway-redis").
# $ROUNDS (default 1) repeats every variant that many times, alternating them (A B A B), so
# that the shared machine's drift shows up as the spread between rounds, not as a difference.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench/gateway-overhead}
DURATION=${DURATION:-20}
VARIANTS=${VARIANTS:-floor gateway}
ROUNDS=${ROUNDS:-1}
SCENARIOS=${SCENARIOS:-latency peak}
# PIN=1: the server on core 1, the load generator on core 0 (taskset), so that they do not
# take turns on the same core; the A/B then varies less with the scheduler.
PIN=${PIN:-0}
server_cpus() { if [ "$PIN" = 1 ]; then echo "taskset -c 1"; fi; }
client_cpus() { if [ "$PIN" = 1 ]; then echo "taskset -c 0"; fi; }
BASELINE_BIN=${BASELINE_BIN:-}
case " $VARIANTS " in *" baseline "*)
  [ -x "$BASELINE_BIN" ] || { echo "variant baseline needs BASELINE_BIN=<gateway binary>" >&2; exit 1; } ;;
esac
mkdir -p "$OUT"
cargo build --release --locked -p gateway -p loadtest --bins --examples >&2
BIN=target/release
. scripts/lib/servers.sh

KEY=sk-bench-overhead
DIGEST=$(key_digest "$KEY")

scenario() { # name clients max_tokens
  cat >"$OUT/$1.toml" <<EOF
model = "bench"
endpoint = "completions"
stream = true
stop = { duration_secs = $DURATION }

[[tenants]]
label = "bench"
api_key = "$KEY"
arrival = { kind = "closed_loop", concurrency = $2 }
prompts = { kind = "synthetic", tokens = 64 }
max_tokens = $3
EOF
}
scenario latency 16 32
scenario peak 64 16
for rate in 1000 5000; do
  cat >"$OUT/rate$((rate / 1000))k.toml" <<EOF
model = "bench"
endpoint = "completions"
stream = false
stop = { duration_secs = $DURATION }

[[tenants]]
label = "bench"
api_key = "$KEY"
arrival = { kind = "poisson", rate = $rate.0 }
prompts = { kind = "synthetic", tokens = 16 }
max_tokens = 1
EOF
done

models_block() { # tokens_per_second [pool]
  echo '[[models]]'
  echo 'id = "bench"'
  echo 'kind = "synthetic"'
  if [ -n "${2:-}" ]; then echo "pools = [\"$2\"]"; fi
  echo '[models.synthetic]'
  echo "tokens_per_second = $1"
}

run_target() { # variant scenario tokens_per_second round
  local variant=$1 name=$2 rate=$3 round=$4 port=$((9300 + RANDOM % 500))
  local tag="$variant-$name-r$round"
  case $variant in
    floor)
      start_server "$OUT/$tag.log" $(server_cpus) "$BIN/examples/synthetic_floor" \
        --listen "127.0.0.1:$port" --tokens-per-second "$rate" ;;
    gateway*|baseline)
      local extra="" models gateway_bin="$BIN/gateway"
      [ "$variant" = baseline ] && gateway_bin=$BASELINE_BIN
      models=$(models_block "$rate")
      if [ "$variant" = gateway-remote ]; then
        local worker_port=$((port + 500))
        models_block "$rate" >"$OUT/$variant-$name-worker.toml"
        ENGINE_WORKER_SECRET=bench-worker-secret-0123 RUST_LOG=warn \
          start_server "$OUT/$variant-$name-worker.log" "$BIN/engine-worker" \
          --config "$OUT/$variant-$name-worker.toml" --listen "127.0.0.1:$worker_port"
        models=$(printf '[[pools]]\nname = "worker"\nkind = "remote"\nurls = ["http://127.0.0.1:%s"]\napi_key_env = "WORKER_SECRET"\n\n' "$worker_port"; models_block "$rate" worker)
      fi
      [ "$variant" = gateway-bare ] && extra=$'[ledger]\nenabled = false\n[telemetry]\nmetrics = false'
      if [ "$variant" = gateway-redis ]; then
        local redis_port=$((port + 600))
        redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
          >"$OUT/$tag-redis.log" 2>&1 &
        pids+=($!)
        until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
        extra=$(printf '[quotas]\nredis_url = "redis://127.0.0.1:%s/0"\nnamespace = "bench-%s"' "$redis_port" "$tag")
      fi
      [ "$variant" = gateway-nosync ] && extra=$'[ledger]\ndurability = "process-crash"'
      [ "$variant" = gateway-store ] && extra=$'[control_plane]\nenabled = true'
      if [ "$variant" = gateway-store-pg ]; then
        rm -rf "$OUT/pg-$tag"
        start_postgres "$OUT/pg-$tag" $((port + 700))
        extra=$(printf '[control_plane]\nenabled = true\nurl = "%s"' "$POSTGRES_URL")
      fi
      rm -rf "$OUT/data-$tag"
      cat >"$OUT/$tag-gateway.toml" <<EOF
listen = "127.0.0.1:$port"
$extra

$models

$(bench_tenant bench "$DIGEST")
EOF
      WORKER_SECRET=bench-worker-secret-0123 GATEWAY_DATA_DIR="$OUT/data-$tag" RUST_LOG=warn \
        start_server "$OUT/$tag.log" $(server_cpus) "$gateway_bin" --config "$OUT/$tag-gateway.toml" ;;
  esac
  local server_pid=${pids[-1]}
  $(client_cpus) "$BIN/loadtest" run --quiet --url "http://127.0.0.1:$port" --scenario "$OUT/$name.toml" \
    --out "$OUT/$tag.json" | sed "s/^/[$variant $name r$round] /"
  # CPU the server spent (user + system, all its threads) per request served: less sensitive
  # than the request rate to neighbours on a shared machine, which slow both alike.
  local user system faults rss ok
  read -r user system faults < <(awk '{print $14, $15, $10}' "/proc/$server_pid/stat")
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status")
  echo "[$variant $name r$round] server minor page faults $faults, resident $rss kB" | tee -a "$OUT/cpu-per-request.txt"
  ok=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['overall']['ok'])" "$OUT/$tag.json")
  python3 -c "import sys; u, s, ok, hz = map(float, sys.argv[1:]); per = lambda t: t / hz / max(ok, 1) * 1e6; print(f'[$variant $name r$round] server CPU {(u + s) / hz:.2f} s for {int(ok)} requests: {per(u + s):.1f} us per request ({per(u):.1f} user, {per(s):.1f} system)')" \
    "$user" "$system" "$ok" "$(getconf CLK_TCK)" | tee -a "$OUT/cpu-per-request.txt"
  stop_servers
}

for name in $SCENARIOS; do
  rate=0
  [ "$name" = latency ] && rate=200
  for round in $(seq "$ROUNDS"); do
    for variant in $VARIANTS; do run_target "$variant" "$name" "$rate" "$round"; done
  done
done

set -- $VARIANTS
first=$1; shift
for name in $SCENARIOS; do
  for round in $(seq "$ROUNDS"); do
    for other in "$@"; do
      echo "== $name, round $round: B = $other over A = $first"
      "$BIN/loadtest" compare "$OUT/$first-$name-r$round.json" "$OUT/$other-$name-r$round.json"
    done
  done
done

#!/usr/bin/env bash
# The soak (issue 14): against the gateway with the synthetic model on loopback, all at once for
# ATTACK_SECS (default 60): 10,000 idle connections held open, 200 slowloris connections, a
# disconnect storm, and a reload of the config file every second, while a well-behaved tenant's
# requests keep running; before that, the same tenant alone (IDLE_SECS, default 15). The driver
# (gateway/examples/soak.rs) prints the tenant's success rate and p99 in both phases and the
# gateway's RSS and open files before, during and after, as JSON; this script adds the reloads
# the gateway applied. Bounded: about IDLE_SECS + ROUNDS x (ATTACK_SECS + 40) s.
#
#   scripts/soak.sh [OUT_DIR]            (default target/soak)
#
# IDLE_CONNECTIONS, SLOWLORIS, STORM size the attack; SETTLE_SECS (10) is the pause before the
# reading after each attack; ROUNDS (2) attacks run one after the other (a leak would grow from
# one to the next). PIN=1 (default) puts the gateway on core 1 and the driver on core 0, so that
# the attackers' own CPU does not count as the gateway's slowness.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/soak}
IDLE_SECS=${IDLE_SECS:-15}
ATTACK_SECS=${ATTACK_SECS:-60}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
SLOWLORIS=${SLOWLORIS:-200}
STORM=${STORM:-16}
SETTLE_SECS=${SETTLE_SECS:-10}
ROUNDS=${ROUNDS:-2}
PIN=${PIN:-1}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# 10,000 connections need as many descriptors, on both sides.
need=$((IDLE_CONNECTIONS + SLOWLORIS + 1000))
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
  echo "the open-file limit $(ulimit -n) is below the $need the soak needs (ulimit -Hn is $(ulimit -Hn))" >&2
  exit 1
fi

cargo build --release --locked -p gateway --bin gateway --example soak >&2
BIN=target/release
. scripts/lib/servers.sh

GOOD_KEY=sk-soak-well-behaved-tenant
STORM_KEY=sk-soak-storm-tenant
ADMIN_KEY=sk-soak-admin-key
GOOD=$(key_digest $GOOD_KEY); STORM_D=$(key_digest $STORM_KEY); ADMIN=$(key_digest $ADMIN_KEY)

# Two versions of the file, swapped every second: the storm tenant's limit changes and a third
# tenant comes and goes, so that every reload really changes the tenants.
write_config() {
  local storm_concurrency=$1 extra=$2
  cat <<TOML
admin_keys = ["$ADMIN"]

[ledger]
enabled = false

[[models]]
id = "syn"
kind = "synthetic"
[models.synthetic]
tokens_per_second = 200

[[tenants]]
id = "well-behaved"
keys = ["$GOOD"]
requests_per_minute = 100000

[[tenants]]
id = "storm"
keys = ["$STORM_D"]
max_concurrent = $storm_concurrency
$extra
TOML
}
write_config 32 "" > "$OUT/config-a.toml"
write_config 48 "$(printf '\n[[tenants]]\nid = "visitor"\nkeys = []\n')" > "$OUT/config-b.toml"
cp "$OUT/config-a.toml" "$OUT/gateway.toml"

server_cpus=(); client_cpus=()
if [ "$PIN" = 1 ]; then server_cpus=(taskset -c 1); client_cpus=(taskset -c 0); fi
RUST_LOG=${RUST_LOG:-info} start_server "$OUT/gateway.log" "${server_cpus[@]}" "$BIN/gateway" \
  --listen 127.0.0.1:0 --config "$OUT/gateway.toml"
GATEWAY=${pids[-1]}
ADDR=$(listening_address "$OUT/gateway.log")
echo "gateway $ADDR (pid $GATEWAY)" >&2

status=0
"${client_cpus[@]}" "$BIN/examples/soak" --addr "$ADDR" --pid "$GATEWAY" \
  --config "$OUT/gateway.toml" --config-a "$OUT/config-a.toml" --config-b "$OUT/config-b.toml" \
  --good-key "$GOOD_KEY" --storm-key "$STORM_KEY" \
  --idle-secs "$IDLE_SECS" --attack-secs "$ATTACK_SECS" \
  --idle-connections "$IDLE_CONNECTIONS" --slowloris "$SLOWLORIS" --storm "$STORM" \
  --settle-secs "$SETTLE_SECS" --rounds "$ROUNDS" \
  >"$OUT/report.json" || status=$?
cat "$OUT/report.json"
echo "reloads applied by the gateway: $(grep -c 'tenants reloaded' "$OUT/gateway.log" || true)"
echo "reloads refused: $(grep -c 'config reload failed' "$OUT/gateway.log" || true)"
echo "panics in the gateway's log: $(grep -c 'panicked' "$OUT/gateway.log" || true)"
exit $status

#!/usr/bin/env bash
# A batch beside interactive work (issue 37): the real gateway on the default model, with its
# control-plane store. Alternates, ROUNDS times (default 2): the quiet interactive tenant alone
# (loadtest/scenarios/quiet-alone.toml, 40 s), then the same beside a batch of LINES (500) chat
# requests of another tenant, created just before. Checks the batch completes with every line
# answered once and billed once, and prints the quiet tenant's TTFT p50/p99 in each run and the
# ratio (the isolation benchmark's rule: p99 within 1.5x of alone).
#
#   scripts/bench-batch-backfill.sh [OUT_DIR]        (default target/bench-batch-backfill)
#
# CONCURRENCY (8) sets `[batches] concurrency`, MAX_RUNNING (16) the model's `max_running`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench-batch-backfill}
ROUNDS=${ROUNDS:-2}
LINES=${LINES:-500}
# Lines of the batch in flight at once (`[batches] concurrency`).
CONCURRENCY=${CONCURRENCY:-8}
MAX_RUNNING=${MAX_RUNNING:-16}
mkdir -p "$OUT"
cargo build --release --locked -p gateway -p loadtest >&2
BIN=target/release
. scripts/lib/servers.sh

export QUIET_KEY=sk-bench-quiet BATCH_KEY=sk-bench-batcher ADMIN_KEY=sk-bench-admin
cat > "$OUT/gateway.toml" <<TOML
admin_keys = ["$(key_digest $ADMIN_KEY)"]

[control_plane]
enabled = true

[batches]
concurrency = $CONCURRENCY
poll_interval_ms = 200

[[models]]
id = "smollm2-135m-instruct"
max_running = $MAX_RUNNING

[[tenants]]
id = "quiet"
keys = ["$(key_digest $QUIET_KEY)"]

[[tenants]]
id = "batcher"
keys = ["$(key_digest $BATCH_KEY)"]
TOML

python3 - "$OUT/lines.jsonl" "$LINES" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "smollm2-135m-instruct", "max_tokens": 48, "ignore_eos": True,
                     "messages": [{"role": "user", "content": f"Write about the number {i}."}]}}) + "\n")
PY

# run NAME WITH_BATCH
run() {
  local name=$1 with_batch=$2
  stop_servers
  rm -rf "$OUT/data" && mkdir -p "$OUT/data"
  GATEWAY_DATA_DIR="$OUT/data" START_WAIT_SECS=300 start_server "$OUT/$name.gateway.log" \
    "$BIN/gateway" serve --config "$OUT/gateway.toml" --listen 127.0.0.1:0
  local addr; addr=$(listening_address "$OUT/$name.gateway.log")
  until curl -sf "http://$addr/ready" >/dev/null; do sleep 0.5; done
  local batch=""
  if [ "$with_batch" = 1 ]; then
    local file; file=$(curl -sf -H "Authorization: Bearer $BATCH_KEY" -F purpose=batch \
      -F "file=@$OUT/lines.jsonl" "http://$addr/v1/files" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    batch=$(curl -sf -H "Authorization: Bearer $BATCH_KEY" -H 'content-type: application/json' \
      -d "{\"input_file_id\": \"$file\", \"endpoint\": \"/v1/chat/completions\", \"completion_window\": \"24h\"}" \
      "http://$addr/v1/batches" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    # The batch is running (in the engine's batch class) before the quiet tenant starts.
    until curl -sf -H "Authorization: Bearer $BATCH_KEY" "http://$addr/v1/batches/$batch" \
      | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["request_counts"]["completed"] > 0 else 1)'; do sleep 0.5; done
  fi
  "$BIN/loadtest" run --quiet --url "http://$addr" --scenario loadtest/scenarios/quiet-alone.toml --out "$OUT/$name.json" >&2
  if [ -n "$batch" ]; then
    local during; during=$(curl -sf -H "Authorization: Bearer $BATCH_KEY" "http://$addr/v1/batches/$batch")
    echo "$during" > "$OUT/$name.batch-after-40s.json"
    local started; started=$(date +%s)
    until curl -sf -H "Authorization: Bearer $BATCH_KEY" "http://$addr/v1/batches/$batch" \
      | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["status"] in ("completed","failed") else 1)'; do sleep 1; done
    curl -sf -H "Authorization: Bearer $BATCH_KEY" "http://$addr/v1/batches/$batch" > "$OUT/$name.batch.json"
    local output; output=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["output_file_id"])' "$OUT/$name.batch.json")
    curl -sf -H "Authorization: Bearer $BATCH_KEY" "http://$addr/v1/files/$output/content" > "$OUT/$name.output.jsonl"
    curl -sf -H "Authorization: Bearer $ADMIN_KEY" "http://$addr/admin/usage/records?tenant=batcher" > "$OUT/$name.records.json"
    echo "batch finished $(( $(date +%s) - started )) s after the quiet run" >&2
  fi
  stop_servers
}

rm -f "$OUT"/*.r*.json
for round in $(seq "$ROUNDS"); do
  run alone.r$round 0
  run beside.r$round 1
done

python3 - "$OUT" "$LINES" <<'PY'
import glob, json, os, sys
out, lines = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, "scripts/lib")
from bench_stats import pct
def ttft(name):
    v = []
    for p in sorted(glob.glob(os.path.join(out, name + ".r*.json"))):
        if p.endswith((".batch.json", ".batch-after-40s.json", ".records.json")):
            continue
        v += [q["ttft_ms"] for q in json.load(open(p))["requests"] if q.get("ttft_ms") is not None]
    return v
alone, beside = ttft("alone"), ttft("beside")
print("| run | quiet requests | TTFT p50 | TTFT p99 |")
print("|---|---|---|---|")
for name, v in (("alone", alone), ("beside a batch", beside)):
    print(f"| {name} | {len(v)} | {pct(v,50):.1f} ms | {pct(v,99):.1f} ms |")
print(f"\nquiet TTFT p99 beside / alone: {pct(beside,99)/pct(alone,99):.2f}x (rule: <= 1.5x); p50 {pct(beside,50)/pct(alone,50):.2f}x")
for p in sorted(glob.glob(os.path.join(out, "beside.r*.batch.json"))):
    r = p[: -len(".batch.json")]
    batch = json.load(open(p))
    ids = [json.loads(l)["custom_id"] for l in open(r + ".output.jsonl") if l.strip()]
    records = [x for x in json.load(open(r + ".records.json"))["data"] if x.get("batch_id") == batch["id"]]
    billed = [x["request_id"] for x in records]
    during = json.load(open(r + ".batch-after-40s.json"))["request_counts"]
    print(f"{os.path.basename(r)}: {batch['status']}, counts {batch['request_counts']}, {during['completed']} done during the quiet run; "
          f"output lines {len(ids)} ({len(set(ids))} distinct), ledger records {len(billed)} ({len(set(billed))} distinct), "
          f"every line once: {len(ids) == len(set(ids)) == lines == len(billed) == len(set(billed))}")
PY

# Shared by the benchmark and soak scripts (sourced, after `BIN` is set to the build's folder):
# start a server and wait for its address, stop every server on exit, a key's stored form, and
# the benchmark tenant.

pids=()

# Stops every server started here (and waits for it).
stop_servers() {
  for pid in "${pids[@]:-}"; do
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}
trap stop_servers EXIT

# start_server LOG COMMAND...: runs it in the background, output to LOG, and waits (up to
# $START_WAIT_SECS, default 30; valgrind needs more) until it prints "listening on".
start_server() {
  local log=$1; shift
  "$@" >"$log" 2>&1 &
  pids+=($!)
  local tries=$(( ${START_WAIT_SECS:-30} * 10 ))
  for _ in $(seq "$tries"); do
    grep -q "listening on" "$log" && return 0
    sleep 0.1
  done
  echo "server did not start: $log" >&2; cat "$log" >&2; exit 1
}

# listening_address LOG: the host:port a started server printed.
listening_address() {
  grep -o "listening on http://[0-9.:]*" "$1" | head -1 | sed 's|listening on http://||'
}

# key_digest KEY: its stored form (`sha256:...`), for a config's `keys`.
key_digest() {
  "$BIN/gateway" keys hash "$1" | tail -1
}

# bench_tenant ID DIGEST: a tenant whose four quotas are on but high enough never to refuse:
# their bookkeeping is part of what is measured.
bench_tenant() {
  cat <<TOML
[[tenants]]
id = "$1"
keys = ["$2"]
requests_per_minute = 10000000
tokens_per_minute = 1000000000
max_concurrent = 100000
daily_tokens = 100000000000
TOML
}

# start_postgres DIR PORT: a throw-away PostgreSQL cluster in DIR (Debian's `postgresql`
# package; as root, run as its `postgres` user, which PostgreSQL insists on), on loopback PORT,
# with a database `bench`; stopped with the other servers. Sets POSTGRES_URL (not printed: the
# server must be started in this shell, not a command substitution's, to be stopped with it).
start_postgres() {
  local dir=$1 port=$2 bin as=()
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  mkdir -p "$dir"
  dir=$(realpath "$dir")
  if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); chown postgres "$dir"; fi
  "${as[@]}" "$bin/initdb" -D "$dir/data" -U gateway --auth=trust -E UTF8 --no-sync >/dev/null
  "${as[@]}" "$bin/postgres" -D "$dir/data" -p "$port" -k "$dir" \
    -c listen_addresses=127.0.0.1 -c fsync=off >"$dir.log" 2>&1 &
  pids+=($!)
  until "$bin/pg_isready" -h 127.0.0.1 -p "$port" -q; do sleep 0.1; done
  "$bin/createdb" -h 127.0.0.1 -p "$port" -U gateway bench
  POSTGRES_URL="postgres://gateway@127.0.0.1:$port/bench"
}

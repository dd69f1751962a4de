#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/fuzz_targets: request_body, config, upstream_sse, gguf_file,
# lora_adapter)
# under libFuzzer.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (default 600 s each, every target)
#
# Needs the nightly toolchain (cargo-fuzz is installed from crates.io when absent). Without
# nightly it says so and exits 0: the committed seeds and regressions are replayed on stable by
# `cargo test -p fuzzing` in every test run anyway. What libFuzzer finds goes to fuzz/work/
# (ignored by git); a crash stops the run and leaves its input in fuzz/artifacts/<target>/:
# copy it to fuzz/regressions/<target>/, where the stable replay keeps it as a regression test,
# and fix the cause.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-600}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(request_body config upstream_sse gguf_file lora_adapter)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain here; the targets' seeds and regressions ran on stable (cargo test -p fuzzing)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi

cd fuzz
# No AddressSanitizer: the code under test is safe Rust, and without it the build and every
# run are several times faster. Panics, overflows (debug assertions are on), timeouts and
# memory blow-ups are what a target finds.
cargo +nightly fuzz build -s none --debug-assertions
for target in "${TARGETS[@]}"; do
  mkdir -p "work/$target"
  echo "fuzz: $target for ${SECONDS_EACH} s"
  set +e
  cargo +nightly fuzz run -s none --debug-assertions "$target" "work/$target" "corpus/$target" -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 >"work/$target.log" 2>&1
  status=$?
  set -e
  grep -E "^(stat::number_of_executed_units|stat::new_units_added|Done [0-9]+ runs)|panicked|ERROR|SUMMARY" "work/$target.log" || true
  if [ "$status" -ne 0 ]; then
    echo "fuzz: $target FAILED (exit $status); the input is in fuzz/artifacts/$target/" >&2
    exit "$status"
  fi
done
echo "fuzz: every target ran ${SECONDS_EACH} s without a crash"

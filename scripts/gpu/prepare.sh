#!/usr/bin/env bash
# Packs what scripts/gpu/request-core-on-gpu.sh needs on the GPU machine, here (no GPU needed):
# the request-core bench built with the `cuda` feature (scripts/check-cuda.sh), xz-compressed; the
# default model split in two parts that each fit one call of the device tool; the `gguf` wheel
# for the PyTorch anchor's loader. Writes .gpu/a and .gpu/b (keep .gpu out of git:
# `echo /.gpu/ >> .git/info/exclude`).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/check-cuda.sh bench -p local_engine --features cuda --bench request_core --no-run
BIN=$(ls -t target/cuda/release/deps/request_core-* | grep -v '\.d$' | head -1)
MODEL=$(python3 -c 'import os;print(os.environ.get("GATEWAY_CACHE_DIR") or os.path.expanduser("~/.cache/gateway"))')/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$MODEL" ] || { echo "no $MODEL: run the test suite or the gateway once to fetch it" >&2; exit 1; }
rm -rf .gpu && mkdir -p .gpu/a .gpu/b
# 58 MB in the first call, the rest beside the binary in the second.
split -b 58000000 -d "$MODEL" .gpu/model.part-
mv .gpu/model.part-00 .gpu/a/ && mv .gpu/model.part-01 .gpu/b/
strip -o .gpu/request_core "$BIN" && xz -T2 -6 -c .gpu/request_core > .gpu/b/request_core.xz && rm .gpu/request_core
python3 -m pip download --quiet --no-deps --only-binary=:all: -d .gpu/b gguf==0.19.0
du -sh .gpu/a .gpu/b

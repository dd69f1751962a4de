#!/usr/bin/env bash
# The request-core benchmark on cuda:0 beside the PyTorch anchor, run ON the GPU machine (which
# has CUDA and PyTorch but no Rust toolchain and no network). scripts/gpu/prepare.sh builds and
# packs what it needs here; see docs/benchmarks.md, "Request core on cuda:0".
#
# The model file (98 MB) is larger than what one call of the device tool may carry (64 MiB), so
# it travels in two parts, one per call, while the machine stays warm between them:
#   scripts/gpu/request-core-on-gpu.sh stage .gpu/a   # part 1; runs the PyTorch anchor (random weights)
#   scripts/gpu/request-core-on-gpu.sh run .gpu/b     # part 2, the bench binary, the gguf wheel
# Results go to $OUT (or ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
STAGE=/tmp/gpu-stage
MODEL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MODEL=SmolLM2-135M-Instruct.Q4_1.gguf
HERE=$(cd "$(dirname "$0")" && pwd)

case "${1:-}" in
stage)
  mkdir -p "$STAGE" && cp "$2"/model.part-* "$STAGE"/
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' | tee -a "$OUT/gpu.txt"
  PYTHONUNBUFFERED=1 python3 "$HERE/torch_anchor.py" --random 2>&1 | grep -v Warning | tee "$OUT/torch-random.txt"
  ;;
run)
  cp "$2"/model.part-* "$STAGE"/ || exit 1
  mkdir -p /tmp/gpu-cache
  cat "$STAGE"/model.part-* > /tmp/gpu-cache/$MODEL
  echo "$MODEL_SHA  /tmp/gpu-cache/$MODEL" | sha256sum -c - || { ls -la "$STAGE"; exit 1; }
  xz -dc "$2/request_core.xz" > /tmp/request_core && chmod +x /tmp/request_core
  # cudarc opens cuBLAS, cuRAND and NVRTC by name: PyTorch's wheels hold them.
  ROOTS="$(python3 -c 'import nvidia; print(" ".join(nvidia.__path__))' 2>/dev/null) /usr/local/cuda /usr/lib/x86_64-linux-gnu"
  LIBS=$(find $ROOTS \( -name 'libcublas.so*' -o -name 'libcurand.so*' -o -name 'libnvrtc.so*' \
    -o -name 'libcudart.so*' -o -name 'libcublasLt.so*' \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
  LIBS=$LIBS:/usr/local/nvidia/lib64
  export LD_LIBRARY_PATH=$LIBS:${LD_LIBRARY_PATH:-}
  echo "libraries from $LIBS" | tee "$OUT/request-core-cuda.txt"
  BENCH_DEVICE=cuda:0 GATEWAY_CACHE_DIR=/tmp/gpu-cache timeout 300 /tmp/request_core 1 4 16 64 \
    2>&1 | tee -a "$OUT/request-core-cuda.txt"
  if ls "$2"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$2"/*.whl &&
      PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 timeout 200 python3 "$HERE/torch_anchor.py" \
        --gguf /tmp/gpu-cache/$MODEL 2>&1 | grep -v Warning | tee "$OUT/torch-gguf.txt"
  fi
  ;;
*)
  echo "usage: $0 stage DIR | run DIR" >&2
  exit 2
  ;;
esac

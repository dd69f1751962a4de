#!/usr/bin/env bash
# Checks that the `cuda` feature builds, on a machine without a GPU or a system CUDA toolkit:
# the toolkit comes from PyPI's NVIDIA wheels (nvcc, runtime headers, CCCL), installed under
# $CUDA_WHEELS (default ~/.cache/gateway/cuda-wheels, about 1.5 GB). Not part of scripts/test.sh:
# it downloads the toolkit and compiles candle's CUDA kernels (about 13 minutes on 2 cores).
#
#   scripts/check-cuda.sh [cargo subcommand and args]    (default: check -p gateway --features cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${CUDA_WHEELS:-$HOME/.cache/gateway/cuda-wheels}
TOOLKIT=$WHEELS/toolkit/nvidia/cu13
if [ ! -x "$TOOLKIT/bin/nvcc" ]; then
  # Two targets: `pip install --target` replaces a package folder that is already there, and
  # these wheels all install into nvidia/cu13.
  python3 -m pip install --quiet --target "$WHEELS/toolkit" nvidia-cuda-nvcc nvidia-cuda-runtime
  python3 -m pip install --quiet --target "$WHEELS/cccl" nvidia-cuda-cccl
  cp -rn "$WHEELS/cccl/nvidia/cu13/include/." "$TOOLKIT/include/"
fi
export PATH=$TOOLKIT/bin:$PATH CUDA_HOME=$TOOLKIT CUDA_PATH=$TOOLKIT CUDA_ROOT=$TOOLKIT
# Kernels for Hopper (H100/H200), the GPUs this centre lends.
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# cudarc 0.19 knows CUDA up to 13.4; the wheels ship 13.5, API-compatible for what candle uses
# (cudarc loads the driver libraries at run time).
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13040}
# A target folder of its own: the feature set differs, and it must not evict the CPU build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
if [ $# -eq 0 ]; then set -- check -p gateway --features cuda; fi
cargo "$@"

#!/usr/bin/env bash
# Checks that the `cuda` feature builds, on a machine without a GPU or a system CUDA toolkit:
# the toolkit comes from PyPI's NVIDIA wheels (nvcc, runtime headers, CCCL), installed under
# $CUDA_WHEELS (default ~/.cache/gateway/cuda-wheels, about 1.5 GB). Not part of scripts/test.sh:
# it downloads the toolkit and compiles candle's CUDA kernels (about 13 minutes on 2 cores).
#
#   scripts/check-cuda.sh [cargo subcommand and args]    (default: check -p gateway --features cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
# The toolkit's version must not be newer than the GPU machine's driver: candle loads its kernels
# as PTX, which the driver compiles at load time and refuses when the PTX ISA is newer than it
# knows. The H200s lent here run driver 580 (CUDA 13.0).
CUDA_VERSION=${CUDA_WHEEL_VERSION:-13.0.*}
WHEELS=${CUDA_WHEELS:-$HOME/.cache/gateway/cuda-wheels-$CUDA_VERSION}
TOOLKIT=$WHEELS/toolkit/nvidia/cu13
if [ ! -x "$TOOLKIT/bin/nvcc" ]; then
  # Two targets: `pip install --target` replaces a package folder that is already there, and
  # these wheels all install into nvidia/cu13.
  python3 -m pip install --quiet --target "$WHEELS/toolkit" \
    "nvidia-cuda-nvcc==$CUDA_VERSION" "nvidia-cuda-runtime==$CUDA_VERSION" \
    "nvidia-cuda-crt==$CUDA_VERSION" "nvidia-nvvm==$CUDA_VERSION"
  python3 -m pip install --quiet --target "$WHEELS/cccl" "nvidia-cuda-cccl==$CUDA_VERSION"
  cp -rn "$WHEELS/cccl/nvidia/cu13/include/." "$TOOLKIT/include/"
fi
# Linking (a bench or the gateway, not `cargo check`) needs the driver and the CUDA libraries
# cudarc links by name. The wheels have the runtime; the others get link-time stubs with the
# real libraries' sonames, made from the function names in cudarc's bindings (as the toolkit's
# own lib/stubs/libcuda.so is): at run time the GPU machine's driver and PyTorch's wheels
# provide the real ones.
STUBS=$TOOLKIT/lib/stubs
if [ ! -f "$STUBS/libcublasLt.so" ]; then
  mkdir -p "$STUBS"
  ln -sf libcudart.so.13 "$TOOLKIT/lib/libcudart.so"
  CUDARC=$(cargo metadata --format-version 1 --features local_engine/cuda | python3 -c \
    'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])')
  for spec in cuda:driver:libcuda.so.1 nvrtc:nvrtc:libnvrtc.so.13 curand:curand:libcurand.so.10 \
    cublas:cublas:libcublas.so.13 cublasLt:cublaslt:libcublasLt.so.13; do
    IFS=: read -r lib module soname <<<"$spec"
    grep -oE 'load::<_F>\("[A-Za-z0-9_]+"\)' "$CUDARC/src/$module/sys/mod.rs" |
      sed -E 's/.*"(.*)".*/void \1(void) {}/' | sort -u >"$STUBS/$lib.c"
    cc -shared -fPIC -Wl,-soname,"$soname" -o "$STUBS/lib$lib.so" "$STUBS/$lib.c"
  done
fi
export PATH=$TOOLKIT/bin:$PATH CUDA_HOME=$TOOLKIT CUDA_PATH=$TOOLKIT CUDA_ROOT=$TOOLKIT
# Kernels for Hopper (H100/H200), the GPUs this centre lends.
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# cudarc cannot always read the version from the wheels' layout; name it (cudarc loads the
# driver libraries at run time).
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
# A target folder of its own: the feature set differs, and it must not evict the CPU build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
if [ $# -eq 0 ]; then set -- check -p gateway --features cuda; fi
cargo "$@"

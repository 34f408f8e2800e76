#!/usr/bin/env bash
# Requantizes the test model (scripts/fetch-model.sh, or XPU_TEST_MODEL) with
# llama.cpp's llama-quantize into the quantization types users download, caches the
# files outside the repository and prints their paths, one a line.
#
#   scripts/make-test-models.sh                 # Q4_K_M Q5_K_M Q6_K Q8_0
#   scripts/make-test-models.sh Q6_K F16        # just these (any llama-quantize type)
#
# llama.cpp: $XPU_LLAMA_CPP_BIN, else the build of scripts/build-llama-cpp.sh.
# Cache: $XPU_TEST_MODEL_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/xpu/test-models.
# A file is made once and reused; model files are never committed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${XPU_LLAMA_CPP_BIN:-$("$root/scripts/build-llama-cpp.sh")}
src=${XPU_TEST_MODEL:-$("$root/scripts/fetch-model.sh")}
cache=${XPU_TEST_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpu/test-models}

if [ ! -x "$bin/llama-quantize" ]; then
    echo "make-test-models: $bin/llama-quantize not found; run scripts/build-llama-cpp.sh or set XPU_LLAMA_CPP_BIN" >&2
    exit 1
fi
if [ ! -f "$src" ]; then
    echo "make-test-models: source model $src not found; run scripts/fetch-model.sh or set XPU_TEST_MODEL" >&2
    exit 1
fi

types=("$@")
[ ${#types[@]} -gt 0 ] || types=(Q4_K_M Q5_K_M Q6_K Q8_0)
mkdir -p "$cache"
base=$(basename "$src" .gguf)
for type in "${types[@]}"; do
    out=$cache/$base.requant-$type.gguf
    if [ ! -s "$out" ]; then
        tmp=$(mktemp "$cache/.$type.XXXXXX")
        # llama-quantize's last argument is its thread count.
        if ! "$bin/llama-quantize" --allow-requantize "$src" "$tmp" "$type" "$(nproc)" >"$tmp.log" 2>&1; then
            tail -20 "$tmp.log" >&2
            rm -f "$tmp" "$tmp.log"
            echo "make-test-models: llama-quantize to $type failed (log above)" >&2
            exit 1
        fi
        rm -f "$tmp.log"
        mv "$tmp" "$out"
    fi
    echo "$out"
done

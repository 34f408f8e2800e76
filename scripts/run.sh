#!/usr/bin/env bash
# The main job on a working default: probe this machine, then serve the default
# model (SmolLM2-135M-Instruct) with an OpenAI-compatible API on 127.0.0.1:52415,
# on the best device the probe found. Extra arguments go to `xpu-runner serve`.
#
#   XPU_MODEL=PATH   serve this GGUF file or safetensors directory instead
#   XPU_FACTS=PATH   where the probe's facts go (default: target/xpu-facts.json)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --locked -p xpu-probe -p xpu-runner --features xpu-runner/vulkan

model=${XPU_MODEL:-$(scripts/fetch-model.sh)}
facts=${XPU_FACTS:-target/xpu-facts.json}

target/release/xpu-probe -o "$facts"
target/release/xpu-probe --format text --no-level-zero >&2
exec target/release/xpu-runner serve --model "$model" --facts "$facts" "$@"

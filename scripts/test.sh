#!/usr/bin/env bash
# Runs every test of the project. This is the command README.md gives and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
XPU_TEST_MODEL=${XPU_TEST_MODEL:-$(scripts/fetch-model.sh)}
export XPU_TEST_MODEL
# llama.cpp b11434 is the correctness reference (and the cluster's RPC backend); tests that
# need it read its binaries' directory from XPU_LLAMA_CPP_BIN.
XPU_LLAMA_CPP_BIN=${XPU_LLAMA_CPP_BIN:-$(scripts/build-llama-cpp.sh)}
export XPU_LLAMA_CPP_BIN
# A spirv-val that knows cooperative matrices checks the SPIR-V of the matrix-core prompt
# kernel (vulkan/tests/coop_spirv.rs); CI must not skip it.
XPU_SPIRV_VAL=${XPU_SPIRV_VAL:-$(scripts/spirv-val.sh)}
export XPU_SPIRV_VAL XPU_REQUIRE_SPIRV_VAL=1

# Formatting is checked first: it is the cheapest failure to report.
cargo fmt --all -- --check

# Then clippy's lints over every target, warnings as errors. In release mode, so that the
# build scripts and proc macros it compiles are the ones the tests below reuse.
cargo clippy --workspace --all-targets --release --locked --features xpu-runner/vulkan -- -D warnings

# Model tests need optimised candle kernels, so the whole suite runs in release mode.
cargo test --workspace --release --locked --features xpu-runner/vulkan

# Suites outside cargo: the helper scripts' option errors (scripts/test-scripts.sh), Nix
# evaluation, the HTTP API with real clients, and the llama.cpp RPC cluster of
# services.xpu-cluster (scripts/test-cluster.sh, on the llama.cpp build above). The API
# suite reuses the runner binary cargo just built (same features), instead of building
# another one with different feature unification.
export XPU_RUNNER_BIN=${XPU_RUNNER_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/xpu-runner}
for suite in scripts/test-scripts.sh scripts/test-nix.sh scripts/test-api.sh scripts/test-cluster.sh; do
    if [ -x "$suite" ]; then
        echo "== $suite" >&2
        "$suite"
    fi
done

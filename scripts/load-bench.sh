#!/usr/bin/env bash
# Load benchmark (not a test): N concurrent streaming chat clients for D seconds
# against `xpu-runner serve`, then the same load against llama.cpp's llama-server
# (build b11434, from scripts/build-llama-cpp.sh) on the same GGUF, with the same
# threads and `-np` equal to our parallelism (1: one generation at a time). Prints
# TTFT p50/p99, aggregate generated tok/s, the count of each status and memory at
# start and end, side by side with the ratio.
#
# Env: XPU_BENCH_CLIENTS (32), XPU_BENCH_SECONDS (60), XPU_BENCH_MAX_TOKENS (64),
#      XPU_BENCH_THREADS (number of cores), XPU_BENCH_CTX (2048),
#      XPU_BENCH_MAX_QUEUE (our --max-queue; default = clients, so that both
#      servers admit every client and throughput compares like with like),
#      XPU_TEST_MODEL (the GGUF; default scripts/fetch-model.sh),
#      XPU_RUNNER_BIN (default: build target/release/xpu-runner),
#      XPU_BENCH_SKIP_LLAMA=1 to measure only ours.
set -euo pipefail
cd "$(dirname "$0")/.."

clients=${XPU_BENCH_CLIENTS:-32}
seconds=${XPU_BENCH_SECONDS:-60}
max_tokens=${XPU_BENCH_MAX_TOKENS:-64}
threads=${XPU_BENCH_THREADS:-$(nproc)}
ctx=${XPU_BENCH_CTX:-2048}
max_queue=${XPU_BENCH_MAX_QUEUE:-$clients}
model=${XPU_TEST_MODEL:-$(scripts/fetch-model.sh)}
if [ -z "${XPU_RUNNER_BIN:-}" ]; then
    cargo build --release -p xpu-runner >&2
    XPU_RUNNER_BIN=$PWD/target/release/xpu-runner
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
common=(--clients "$clients" --seconds "$seconds" --max-tokens "$max_tokens")

echo "load-bench: $clients clients x ${seconds}s, max_tokens $max_tokens, $threads threads, ctx $ctx, model $(basename "$model")" >&2
echo "load-bench: the machine may be shared; other processes skew both runs alike only if they are steady" >&2

port=$(free_port)
ours=$(python3 scripts/load_bench.py --name xpu-runner --port "$port" --model-id bench "${common[@]}" -- \
    "$XPU_RUNNER_BIN" serve --model "$model" --model-id bench --port "$port" --device cpu \
    --threads "$threads" --ctx "$ctx" --max-queue "$max_queue")

theirs=""
if [ "${XPU_BENCH_SKIP_LLAMA:-0}" != 1 ]; then
    llama_bin=$(scripts/build-llama-cpp.sh)
    port=$(free_port)
    theirs=$(python3 scripts/load_bench.py --name llama-server --port "$port" --model-id bench "${common[@]}" -- \
        "$llama_bin/llama-server" -m "$model" --alias bench --host 127.0.0.1 --port "$port" \
        -t "$threads" -c "$ctx" -np 1)
fi

python3 - "$ours" "$theirs" <<'PY'
import json, sys
rows = [json.loads(a) for a in sys.argv[1:] if a]
keys = ["ttft_p50_s", "ttft_p99_s", "tokens_per_s", "generated_tokens", "status",
        "rss_start_mib", "rss_end_mib", "anon_swap_start_mib", "anon_swap_end_mib"]
print(f"{'':22}" + "".join(f"{r['name']:>24}" for r in rows) + ("   ours/llama" if len(rows) == 2 else ""))
for k in keys:
    vals = [r[k] for r in rows]
    cells = "".join(f"{json.dumps(v) if isinstance(v, dict) else v:>24}" for v in vals)
    ratio = ""
    if len(rows) == 2 and all(isinstance(v, (int, float)) for v in vals) and vals[1]:
        ratio = f"   {vals[0] / vals[1]:.2f}"
    print(f"{k:22}{cells}{ratio}")
PY

#!/usr/bin/env bash
# Load benchmark (not a test): for each N in a list, N concurrent streaming chat clients
# for D seconds against `xpu-runner serve --parallel N`, then the same load against
# llama.cpp's llama-server (build b11434, scripts/build-llama-cpp.sh) on the same GGUF with
# the same threads, `-np N` slots and `-c N x ctx` (so each slot holds the same context as
# ours), continuous batching (its default) and flash attention on `auto` (its default,
# which the CPU backend turns on). Prints one table row per N: aggregate generated tok/s,
# TTFT p50/p99, errors (non-200 answers and broken connections), incomplete responses (no
# finish_reason or no [DONE]) and the ratio ours / llama-server.
#
# An xpu-runner without `--parallel` (before continuous batching) is measured as it is,
# generating one request at a time; the script says so.
#
# Env: XPU_BENCH_CLIENTS ("1 2 4 8 16": the values of N), XPU_BENCH_SECONDS (30 per N),
#      XPU_BENCH_MAX_TOKENS (64), XPU_BENCH_THREADS (2), XPU_BENCH_CTX (2048, per sequence),
#      XPU_TEST_MODEL (the GGUF; default scripts/fetch-model.sh),
#      XPU_RUNNER_BIN (default: build target/release/xpu-runner),
#      XPU_LLAMA_CPP_BIN (llama.cpp's bin directory; default scripts/build-llama-cpp.sh),
#      XPU_BENCH_SKIP_LLAMA=1 to measure only ours.
set -euo pipefail
cd "$(dirname "$0")/.."

clients_list=${XPU_BENCH_CLIENTS:-1 2 4 8 16}
seconds=${XPU_BENCH_SECONDS:-30}
max_tokens=${XPU_BENCH_MAX_TOKENS:-64}
threads=${XPU_BENCH_THREADS:-2}
ctx=${XPU_BENCH_CTX:-2048}
model=${XPU_TEST_MODEL:-$(scripts/fetch-model.sh)}
say() { echo "load-bench: $*" >&2; }
for n in $clients_list; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { say "XPU_BENCH_CLIENTS must list positive integers, got '$n'"; exit 2; }
done
[ -f "$model" ] || { say "no model file at $model (set XPU_TEST_MODEL)"; exit 1; }
if [ -z "${XPU_RUNNER_BIN:-}" ]; then
    cargo build --release -p xpu-runner >&2
    XPU_RUNNER_BIN=$PWD/target/release/xpu-runner
fi
skip_llama=${XPU_BENCH_SKIP_LLAMA:-0}
if [ "$skip_llama" != 1 ]; then
    llama_bin=${XPU_LLAMA_CPP_BIN:-$(scripts/build-llama-cpp.sh)}
fi

# `serve` refuses flags it does not know, so ask its help first.
if "$XPU_RUNNER_BIN" serve --help | grep -q -- '--parallel'; then
    parallel=1
else
    parallel=0
    say "this xpu-runner has no --parallel: it serves one request at a time; measuring it as it is"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
common=(--seconds "$seconds" --max-tokens "$max_tokens")

say "N = $clients_list clients x ${seconds}s, max_tokens $max_tokens, $threads threads, ctx $ctx per sequence, model $(basename "$model")"
say "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (a shared machine skews both servers; figures from one are rough)"

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for n in $clients_list; do
    ours=(serve --model "$model" --model-id bench --device cpu --threads "$threads" --ctx "$ctx" --max-queue "$n")
    [ "$parallel" = 0 ] || ours+=(--parallel "$n")
    port=$(free_port)
    say "N=$n: xpu-runner"
    python3 scripts/load_bench.py --name "xpu-runner-$n" --port "$port" --model-id bench --clients "$n" "${common[@]}" -- \
        "$XPU_RUNNER_BIN" "${ours[@]}" --port "$port" >> "$results"
    if [ "$skip_llama" != 1 ]; then
        port=$(free_port)
        say "N=$n: llama-server"
        python3 scripts/load_bench.py --name "llama-server-$n" --port "$port" --model-id bench --clients "$n" "${common[@]}" -- \
            "$llama_bin/llama-server" -m "$model" --alias bench --host 127.0.0.1 --port "$port" \
            -t "$threads" -np "$n" -c $((n * ctx)) -fa auto >> "$results"
    fi
done
say "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {}
for r in rows:
    server, _, n = r["name"].rpartition("-")
    by.setdefault(int(n), {})[server] = r
peer = any("llama-server" in v for v in by.values())
head = f"{'N':>3} | {'ours tok/s':>10} {'TTFT p50/p99 s':>15} {'err':>4} {'inc':>4}"
if peer:
    head += f" | {'llama tok/s':>11} {'TTFT p50/p99 s':>15} {'err':>4} {'inc':>4} | {'ours/llama':>10}"
print(head)
print("-" * len(head))
for n in sorted(by):
    cells = []
    for server in ["xpu-runner"] + (["llama-server"] if peer else []):
        r = by[n].get(server)
        if r is None:
            cells.append(f"{'-':>10} {'-':>15} {'-':>4} {'-':>4}")
            continue
        ttft = f"{r['ttft_p50_s']:.2f}/{r['ttft_p99_s']:.2f}"
        cells.append(f"{r['tokens_per_s']:>{10 if server == 'xpu-runner' else 11}.1f} {ttft:>15} {r['errors']:>4} {r['incomplete']:>4}")
    line = f"{n:>3} | " + " | ".join(cells)
    if peer:
        ours, theirs = by[n].get("xpu-runner"), by[n].get("llama-server")
        ratio = ours["tokens_per_s"] / theirs["tokens_per_s"] if ours and theirs and theirs["tokens_per_s"] else float("nan")
        line += f" | {ratio:>10.2f}"
    print(line)
print("err: non-200 answers and broken connections; inc: 200 answers without finish_reason or [DONE]")
PY

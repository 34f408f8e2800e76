#!/usr/bin/env bash
# Decode speed when the machine is shared (a benchmark, not a test): ours (`xpu-runner
# bench`) and llama.cpp's `llama-bench`, each on the same GGUF with the same threads,
# first on an idle machine, then with a niced busy loop pinned to one core (another
# service on a server host). Prints decode tok/s idle and under load, and the ratio
# load / idle, for both engines.
#
# A team of spinning worker threads waits for its slowest member at every step; when the
# busy loop takes a worker's core for a scheduler time slice, every step waits that long
# (issue 13 measured SmolLM2 on 2 threads falling from about 90 to about 3 tok/s in both
# engines). The target for ours is load / idle >= 0.4.
#
# Env (all optional):
#   XPU_BENCH_THREADS   threads for both engines (default 2)
#   XPU_BENCH_GEN       generated tokens (default 64)
#   XPU_BENCH_REPS      repetitions, figures are medians/means (default 3)
#   XPU_BENCH_LOAD_CPU  the core the busy loop is pinned to (default: the last one)
#   XPU_BENCH_LOAD_NICE its niceness (default 5)
#   XPU_TEST_MODEL      the GGUF (default: scripts/fetch-model.sh, SmolLM2-135M Q4_1)
#   XPU_RUNNER_BIN      an xpu-runner binary (default: build target/release/xpu-runner)
#   XPU_LLAMA_CPP_BIN   llama.cpp's bin directory (default: scripts/build-llama-cpp.sh)
#   XPU_BENCH_SKIP_LLAMA=1  measure only ours
set -euo pipefail
cd "$(dirname "$0")/.."

threads=${XPU_BENCH_THREADS:-2}
gen=${XPU_BENCH_GEN:-64}
reps=${XPU_BENCH_REPS:-3}
load_cpu=${XPU_BENCH_LOAD_CPU:-$(($(nproc) - 1))}
load_nice=${XPU_BENCH_LOAD_NICE:-5}
model=${XPU_TEST_MODEL:-$(scripts/fetch-model.sh)}
say() { echo "bench-shared-cpu: $*" >&2; }

command -v taskset >/dev/null || { say "taskset not found; install util-linux"; exit 1; }
[ -f "$model" ] || { say "no model file at $model (set XPU_TEST_MODEL)"; exit 1; }
if [ -z "${XPU_RUNNER_BIN:-}" ]; then
    cargo build --release -p xpu-runner >&2
    XPU_RUNNER_BIN=$PWD/target/release/xpu-runner
fi
skip_llama=${XPU_BENCH_SKIP_LLAMA:-0}
if [ "$skip_llama" != 1 ]; then
    llama_bin=${XPU_LLAMA_CPP_BIN:-$(scripts/build-llama-cpp.sh)}
fi

busy=""
stop_load() {
    if [ -n "$busy" ]; then
        kill "$busy" 2>/dev/null || true
        wait "$busy" 2>/dev/null || true
        busy=""
    fi
}
trap stop_load EXIT
start_load() {
    taskset -c "$load_cpu" nice -n "$load_nice" sh -c 'while :; do :; done' &
    busy=$!
    sleep 0.5
}

ours() {
    "$XPU_RUNNER_BIN" bench --model "$model" --device cpu --threads "$threads" \
        --prompt-tokens 16 --gen-tokens "$gen" --repetitions "$reps" --json \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["decode_tokens_per_second"])'
}

theirs() {
    "$llama_bin/llama-bench" -m "$model" -t "$threads" -p 0 -n "$gen" -r "$reps" -o json 2>/dev/null \
        | python3 -c 'import json,sys; print([r["avg_ts"] for r in json.load(sys.stdin) if r["n_prompt"] == 0][0])'
}

say "$(basename "$model"), $threads threads, $gen tokens x $reps; busy loop: taskset -c $load_cpu nice -n $load_nice"
say "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (figures from a busy machine are rough)"
engines=(ours)
[ "$skip_llama" = 1 ] || engines+=(theirs)
declare -A idle loaded
for engine in "${engines[@]}"; do
    say "$engine idle"
    idle[$engine]=$($engine)
    start_load
    say "$engine under the busy loop"
    loaded[$engine]=$($engine)
    stop_load
done

printf '%-22s %12s %12s %10s\n' "decode tok/s" idle "under load" "load/idle"
for engine in "${engines[@]}"; do
    name=$([ "$engine" = ours ] && echo xpu-runner || echo llama.cpp)
    python3 -c 'import sys; n, i, l = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]); print(f"{n:<22} {i:>12.1f} {l:>12.1f} {l / i:>10.2f}")' \
        "$name" "${idle[$engine]}" "${loaded[$engine]}"
done

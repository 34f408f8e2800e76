#!/usr/bin/env bash
# CPU speed of xpu-runner against llama.cpp b11434, measured in the same run on the
# same files with the same thread count, plus the memory-bandwidth bound of decode.
#
# For each model it runs `xpu-runner bench --json` (for every CPU engine listed in
# XPU_BENCH_ENGINES) and `llama-bench -p N -n N -r R`, and prints prefill and decode
# tok/s and the ratio ours / llama.cpp. Models: SmolLM2-135M Q4_1 (the test model)
# and the 1B-class random-weight Llama files in Q8_0 and Q4_0 (scripts/make-bench-gguf.py);
# on request SmolLM2 requantized (smollm2-q4_k_m etc., scripts/make-test-models.sh) and
# the 1B file requantized from Q8_0 to Q4_K_M (q4_k_m).
#
# Decode bound = measured memory read bandwidth / bytes of weights read per token.
# The bandwidth comes from a small C program in this script (all threads summing a
# 1 GiB buffer with AVX2, best of 5 passes), built with the system C compiler.
#
# Env (all optional):
#   XPU_BENCH_THREADS   threads for both engines (default: nproc)
#   XPU_BENCH_PROMPT    prompt tokens (-p, default 128)
#   XPU_BENCH_GEN       generated tokens (-n, default 64)
#   XPU_BENCH_REPS      repetitions (-r, default 3)
#   XPU_BENCH_ROUNDS    rounds (default 1): each round runs every engine on every model
#                       once, alternating ours and llama.cpp; the report gives each
#                       figure's median over the rounds and the median of the rounds' ratios
#   XPU_BENCH_MODELS    space-separated list: smollm2 q8_0 q4_0 q4_1 q4_k_m, smollm2-TYPE for
#                       SmolLM2 requantized to a llama-quantize TYPE, e.g. smollm2-q4_k_m
#                       (default "smollm2 q8_0 q4_0")
#   XPU_BENCH_ENGINES   space-separated xpu-runner CPU engines: xpu candle (default "xpu candle")
#   XPU_RUNNER_BIN      an xpu-runner binary to use instead of building one
#   XPU_CACHE           cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/xpu)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${XPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpu}
threads=${XPU_BENCH_THREADS:-$(nproc)}
prompt=${XPU_BENCH_PROMPT:-128}
gen=${XPU_BENCH_GEN:-64}
reps=${XPU_BENCH_REPS:-3}
rounds=${XPU_BENCH_ROUNDS:-1}
models=${XPU_BENCH_MODELS:-smollm2 q8_0 q4_0}
engines=${XPU_BENCH_ENGINES:-xpu candle}

say() { echo "bench-cpu: $*" >&2; }

# --- binaries -------------------------------------------------------------
if [ -n "${XPU_RUNNER_BIN:-}" ]; then
    runner=$XPU_RUNNER_BIN
else
    say "building xpu-runner (release)"
    (cd "$repo" && cargo build --release --locked -p xpu-runner --bin xpu-runner >&2)
    runner=${CARGO_TARGET_DIR:-$repo/target}/release/xpu-runner
fi
[ -x "$runner" ] || { say "no xpu-runner binary at $runner"; exit 1; }
llama_bin=$("$repo/scripts/build-llama-cpp.sh")
llama_bench=$llama_bin/llama-bench

# --- memory bandwidth -------------------------------------------------------
bw_src=$cache/membw.c
bw_bin=$cache/membw
mkdir -p "$cache"
cat > "$bw_src.new" <<'C'
/* Read bandwidth: every thread sums its share of a 1 GiB buffer; best of 5 passes. */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define SIZE (1ull << 30)
static char *buf; static int nthreads; static volatile double sink;
static void *worker(void *arg) {
    long t = (long)arg; size_t per = SIZE / nthreads;
    const __m256i *p = (const __m256i *)(buf + t * per), *end = (const __m256i *)(buf + (t + 1) * per);
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (; p < end; p += 4) {
        a = _mm256_add_epi64(a, _mm256_load_si256(p)); b = _mm256_add_epi64(b, _mm256_load_si256(p + 1));
        c = _mm256_add_epi64(c, _mm256_load_si256(p + 2)); d = _mm256_add_epi64(d, _mm256_load_si256(p + 3));
    }
    a = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    sink += (double)_mm256_extract_epi64(a, 0);
    return NULL;
}
int main(int argc, char **argv) {
    nthreads = argc > 1 ? atoi(argv[1]) : 1;
    if (posix_memalign((void **)&buf, 64, SIZE)) return 1;
    memset(buf, 1, SIZE);
    double best = 0;
    for (int pass = 0; pass < 5; pass++) {
        pthread_t th[256]; struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (long i = 0; i < nthreads; i++) pthread_create(&th[i], NULL, worker, (void *)i);
        for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9, gbs = SIZE / s / 1e9;
        if (gbs > best) best = gbs;
    }
    printf("%.2f\n", best);
    return 0;
}
C
if ! cmp -s "$bw_src.new" "$bw_src" || [ ! -x "$bw_bin" ]; then
    mv "$bw_src.new" "$bw_src"
    cc -O2 -mavx2 -pthread -o "$bw_bin" "$bw_src"
else
    rm -f "$bw_src.new"
fi
bandwidth=$("$bw_bin" "$threads")
say "memory read bandwidth with $threads threads: $bandwidth GB/s"

# --- models ---------------------------------------------------------------
model_path() {
    case $1 in
        smollm2) "$repo/scripts/fetch-model.sh" ;;
        q8_0 | q4_0 | q4_1) "$repo/scripts/make-bench-gguf.py" --types "$1" ;;
        smollm2-*) XPU_LLAMA_CPP_BIN=$llama_bin "$repo/scripts/make-test-models.sh" "$(echo "${1#smollm2-}" | tr a-z A-Z)" ;;
        q4_k_m)
            local src out
            src=$("$repo/scripts/make-bench-gguf.py" --types q8_0)
            out=${src%.Q8_0.gguf}.Q4_K_M.gguf
            if [ ! -s "$out" ]; then
                "$llama_bin/llama-quantize" --allow-requantize "$src" "$out.tmp" Q4_K_M "$(nproc)" >/dev/null 2>&1 \
                    || { say "llama-quantize of $src to Q4_K_M failed"; rm -f "$out.tmp"; exit 1; }
                mv "$out.tmp" "$out"
            fi
            echo "$out"
            ;;
        *) say "unknown model '$1' in XPU_BENCH_MODELS (use smollm2, smollm2-TYPE, q8_0, q4_0, q4_1, q4_k_m)"; exit 1 ;;
    esac
}

results=$(mktemp)
trap 'rm -f "$results"' EXIT
declare -A paths
for name in $models; do
    paths[$name]=$(model_path "$name")
    say "$name: ${paths[$name]}"
done
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq 1 "$rounds"); do
for name in $models; do
    path=${paths[$name]}
    say "round $round/$rounds, $name"
    for engine in $engines; do
        say "  xpu-runner ($engine engine)"
        XPU_CPU_ENGINE=$engine "$runner" bench --model "$path" --device cpu --threads "$threads" \
            --prompt-tokens "$prompt" --gen-tokens "$gen" --repetitions "$reps" --json \
            | python3 -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps({"kind":"ours","engine":sys.argv[1],"model":sys.argv[2],"path":sys.argv[3],"round":int(sys.argv[4]),"prefill":r["prefill_tokens_per_second"],"decode":r["decode_tokens_per_second"],"device":r.get("device","")}))' \
                "$engine" "$name" "$path" "$round" >> "$results"
    done
    say "  llama-bench"
    "$llama_bench" -m "$path" -t "$threads" -p "$prompt" -n "$gen" -r "$reps" -o json 2>/dev/null \
        | python3 -c 'import json,sys
rows=json.load(sys.stdin); pp=[r["avg_ts"] for r in rows if r["n_gen"]==0]; tg=[r["avg_ts"] for r in rows if r["n_prompt"]==0]
print(json.dumps({"kind":"llama","model":sys.argv[1],"path":sys.argv[2],"round":int(sys.argv[3]),"prefill":pp[0],"decode":tg[0]}))' "$name" "$path" "$round" >> "$results"
done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ---------------------------------------------------------------
XPU_BW=$bandwidth XPU_THREADS=$threads XPU_P=$prompt XPU_N=$gen XPU_R=$reps XPU_ROUNDS=$rounds \
    XPU_LOAD="$load_before -> $load_after" \
    "$cache/venv-gguf/bin/python" - "$results" <<'PY'
import json, os, statistics, sys
import gguf

rows = [json.loads(l) for l in open(sys.argv[1])]
bw = float(os.environ["XPU_BW"])

def bytes_per_token(path):
    """Bytes of weights one decode step reads: every matrix and vector except the
    embedding table (one row), which is read in full only when it is also the output."""
    r = gguf.GGUFReader(path)
    names = {t.name for t in r.tensors}
    total = 0
    for t in r.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue
        total += int(t.n_bytes)
    return total

rounds = int(os.environ["XPU_ROUNDS"])
print(f"\nCPU benchmark: {os.environ['XPU_THREADS']} threads, -p {os.environ['XPU_P']} -n {os.environ['XPU_N']} -r {os.environ['XPU_R']}, "
      f"{rounds} round(s) (medians), memory read bandwidth {bw:.1f} GB/s (C AVX2 read loop, all threads), "
      f"load average (1, 5, 15 min) {os.environ['XPU_LOAD']}\n")
hdr = f"{'model':<15} {'engine':<18} {'prefill tok/s':>13} {'ratio':>6} {'decode tok/s':>12} {'ratio':>6} {'% of bound':>10}"
print(hdr)
print("-" * len(hdr))
median = statistics.median
for model in dict.fromkeys(r["model"] for r in rows):
    peers = {r["round"]: r for r in rows if r["model"] == model and r["kind"] == "llama"}
    path = next(iter(peers.values()))["path"]
    bound = bw * 1e9 / bytes_per_token(path)
    engines = dict.fromkeys(r["engine"] for r in rows if r["model"] == model and r["kind"] == "ours")
    for engine in [*engines, None]:
        runs = [r for r in rows if r["model"] == model and (r["kind"] == "llama" if engine is None else r.get("engine") == engine)]
        label = "llama.cpp b11434" if engine is None else f"xpu-runner/{engine}"
        prefill = median(r["prefill"] for r in runs)
        decode = median(r["decode"] for r in runs)
        # Each round's ratio against the peer's run of the same round, then the median.
        rp = median(r["prefill"] / peers[r["round"]]["prefill"] for r in runs)
        rd = median(r["decode"] / peers[r["round"]]["decode"] for r in runs)
        spread = ""
        if rounds > 1:
            spread = f"   decode ratios {min(r['decode'] / peers[r['round']]['decode'] for r in runs):.2f}-{max(r['decode'] / peers[r['round']]['decode'] for r in runs):.2f}"
        print(f"{model:<15} {label:<18} {prefill:>13.1f} {rp:>6.2f} {decode:>12.1f} {rd:>6.2f} {100 * decode / bound:>9.0f}%{spread if engine else ''}")
    print(f"{model:<15} {'bandwidth bound':<18} {'':>13} {'':>6} {bound:>12.1f}")
print("\nratio = ours / llama.cpp (targets: decode >= 1.0, prefill >= 0.8)")
PY

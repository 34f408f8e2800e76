#!/usr/bin/env bash
# Benchmarks the Vulkan engine on random-weight GGUFs in real models' shapes (1B and 8B Llama;
# scripts/make-bench-gguf.py):
# decode and prefill tok/s, the device's copy bandwidth measured in the same run, and decode as
# a percentage of the memory-bandwidth bound (bandwidth / weight bytes read per token). The peer,
# llama.cpp's Vulkan backend (llama-bench), runs on the same files and GPU in the same run when
# its binary is there, and the summary gives ours / llama.cpp for decode and prefill. Candle's
# quantized llama on the CPU (the runner's CPU engine) runs on the same files for the record.
#
# Usage:
#   scripts/bench-vulkan.sh [--types q8_0,q4_0] [--shapes llama-1b,llama-8b]
#                           [--bin DIR] [--models DIR] [--reference GGUF]
#                           [--prompt N] [--decode N] [--runs N] [--rounds N] [--no-warmup]
#                           [--cpu-decode N] [--no-cpu]
#                           [--llama PATH | --no-llama] [--devices LIST]... [--split SHARES]
#   scripts/bench-vulkan.sh --pack DIR [--with-llama | --with-llama-source]
#
# --pack builds the release binaries here and copies them, stripped, into DIR together with a
# tokenizer-only reference GGUF, so that a machine without Rust or the test model (a GPU
# benchmark host) can run:  scripts/bench-vulkan.sh --bin DIR --reference DIR/reference.gguf
# When DIR holds the kernel tests (kernel-tests, attention-tests, coop-tests, also packed), they run first on that host's
# GPU (all but the one that needs the SmolLM2 file). --with-llama also builds llama.cpp's
# llama-bench with the Vulkan backend (scripts/build-llama-cpp.sh --vulkan, half an hour on two
# cores the first time) and packs it as DIR/llama-bench-vulkan, the default --llama, with the
# same build's llama-quantize (DIR/llama-quantize), which makes the K-quant files (q4_k_m,
# q5_k_m, q6_k in --types) from the Q8_0 one on the GPU host. --with-llama-source packs instead
# what building that peer needs (DIR/peer-sources.tar.xz: llama.cpp's sources, the glslc and
# Vulkan headers of scripts/build-vulkan-tools.sh), and the GPU host builds it on its own cores
# (CMake and a C++ compiler there) before the first benchmark.
# The peer's prefill is pp<prompt> from an empty cache, its decode tg<decode> after <prompt>
# tokens (llama-bench -d), as ours: decode after the prompt.
# A GPU that has just woken up measures a fraction of its speed (a peer's first prefill read
# 5800 tok/s, and 15100 75 s later), so the run starts with one short run of each engine on the
# first file, not counted (--no-warmup skips it); then, per file, ours and the peer take turns
# for --rounds N rounds (default 2), each round's figures the medians of --runs N runs, and
# each engine's figure is its best round. The GPU's clocks are printed before every
# measurement where the driver shows them (nvidia-smi; Intel's i915/xe frequency in sysfs).
# --devices LIST (the runner's --devices: adapter indices or PCI addresses, `auto`) runs our
# engine on those devices; several split the model's layers (--split 3,1 sets the shares), and
# the figures add the time spent crossing devices per token. Repeat it to compare, e.g.
# `--devices 0 --devices 0,1`: each list runs in turn on every file, and the summary gives each
# one's decode and prefill against the first's and whether its greedy tokens are the first's.
# The peer then runs with --split-mode layer over all GPUs when the last list has several.
# Lavapipe (CPU) timings say nothing about GPUs: the Vulkan figures only count on a real GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

types=q8_0,q4_0
shapes=llama-1b
bin=
models=
reference=
prompt=512
decode=128
runs=3
rounds=2
warmup=1
cpu_decode=16
cpu=1
pack=
with_llama=0
with_llama_source=0
llama=
no_llama=0
device_lists=()
split=
while [ $# -gt 0 ]; do
    case "$1" in
        --types) types=$2; shift 2 ;;
        --shapes) shapes=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        --models) models=$2; shift 2 ;;
        --reference) reference=$2; shift 2 ;;
        --prompt) prompt=$2; shift 2 ;;
        --decode) decode=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --no-warmup) warmup=0; shift ;;
        --cpu-decode) cpu_decode=$2; shift 2 ;;
        --no-cpu) cpu=0; shift ;;
        --pack) pack=$2; shift 2 ;;
        --with-llama) with_llama=1; shift ;;
        --with-llama-source) with_llama_source=1; shift ;;
        --llama) llama=$2; shift 2 ;;
        --no-llama) no_llama=1; shift ;;
        --devices) device_lists+=("$2"); shift 2 ;;
        --split) split=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-vulkan: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

for count in "$prompt" "$decode" "$runs" "$rounds"; do
    [[ "$count" =~ ^[1-9][0-9]*$ ]] || {
        echo "bench-vulkan: --prompt, --decode, --runs and --rounds take a positive number, not '$count'" >&2
        exit 2
    }
done

target=${CARGO_TARGET_DIR:-target}

if [ -n "$pack" ]; then
    cargo build --release -p xpu-vulkan --example bench
    mkdir -p "$pack"
    strip -o "$pack/bench" "$target/release/examples/bench"
    # The kernel tests (matrix kernels, attention, the prompt product on cooperative
    # matrices) run first on the GPU host.
    for suite in kernels attention coop; do
        tests=$(cargo test --release -p xpu-vulkan --test "$suite" --no-run --message-format=json \
            | "${PYTHON:-python3}" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$suite")
        strip -o "$pack/${suite%s}-tests" "$tests"
    done
    if [ "$with_llama_source" = 1 ]; then
        mapfile -t vk_tools < <(scripts/build-vulkan-tools.sh)
        scripts/build-llama-cpp.sh --pack-source "$pack/peer-sources.tar.xz" "${vk_tools[@]}"
    fi
    if [ "$with_llama" = 1 ]; then
        llama_bin=$(scripts/build-llama-cpp.sh --vulkan)
        strip -o "$pack/llama-bench-vulkan" "$llama_bin/llama-bench"
        strip -o "$pack/llama-quantize" "$llama_bin/llama-quantize"
    fi
    model=${XPU_TEST_MODEL:-$(scripts/fetch-model.sh)}
    # The bench files copy SmolLM2's tokenizer; a GGUF holding only the tokenizer keys is
    # ~2 MiB instead of the 94 MiB model.
    # -P: the repository's gguf/ (a Rust crate) must not pass for the python package.
    "${PYTHON:-python3}" -P - "$model" "$pack/reference.gguf" <<'PY'
import sys
try:
    import gguf
except ImportError:
    sys.exit("bench-vulkan: --pack needs the python package gguf (pip install gguf==0.19.0)")
reader = gguf.GGUFReader(sys.argv[1])
writer = gguf.GGUFWriter(sys.argv[2], "llama", use_temp_file=False)
for name, field in reader.fields.items():
    if not name.startswith("tokenizer."):
        continue
    main = field.types[0]
    if main == gguf.GGUFValueType.ARRAY:
        writer.add_key_value(name, field.contents(), main, sub_type=field.types[-1])
    else:
        writer.add_key_value(name, field.contents(), main)
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file(progress=False)
writer.close()
PY
    ls -la "$pack"
    exit 0
fi

if [ -z "$bin" ]; then
    cargo build --release -p xpu-vulkan --example bench >&2
    bin=$target/release/examples
fi

# The peer from packed sources (--pack --with-llama-source), built once on this host.
if [ -f "$bin/peer-sources.tar.xz" ] && [ ! -x "$bin/llama-bench-vulkan" ] && [ "$no_llama" = 0 ]; then
    echo "== building llama.cpp's Vulkan backend from the packed sources" >&2
    # An absolute cache path: the build hands it to CMake, which runs in another directory.
    peer_cache=$(cd "$bin" && pwd)/cache
    mkdir -p "$peer_cache"
    tar -C "$peer_cache" -xJf "$bin/peer-sources.tar.xz"
    peer_bin=$(XPU_CACHE=$peer_cache XPU_BUILD_JOBS=${XPU_BUILD_JOBS:-$(nproc)} scripts/build-llama-cpp.sh --vulkan)
    cp "$peer_bin/llama-bench" "$bin/llama-bench-vulkan"
    cp "$peer_bin/llama-quantize" "$bin/llama-quantize"
fi
gen_args=(--types "$types")
[ -n "$models" ] && gen_args+=(--out "$models")
[ -n "$reference" ] && gen_args+=(--reference "$reference")
[ -x "$bin/llama-quantize" ] && gen_args+=(--quantize "$bin/llama-quantize")
files=()
for shape in ${shapes//,/ }; do
    if python3 -c 'import gguf, numpy' 2>/dev/null; then
        # gguf is importable here (e.g. from wheels on PYTHONPATH on a host without an index):
        # run the generator in this interpreter instead of its own virtual environment.
        mapfile -t made < <(python3 - --shape "$shape" "${gen_args[@]}" <<'PY'
import importlib.util, sys
sys.path.insert(0, "scripts")  # gguf_common.py beside the generator
spec = importlib.util.spec_from_file_location("make_bench_gguf", "scripts/make-bench-gguf.py")
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)
gen.ensure_gguf = lambda *args: None
sys.argv = ["make-bench-gguf.py", *sys.argv[1:]]
gen.main()
PY
)
    else
        mapfile -t made < <(scripts/make-bench-gguf.py --shape "$shape" "${gen_args[@]}")
    fi
    files+=("${made[@]}")
done
[ "${#files[@]}" -gt 0 ] || { echo "bench-vulkan: no benchmark files were made" >&2; exit 1; }

# The packed kernel tests, all but the one that needs the SmolLM2 file.
for suite in kernel attention coop; do
    if [ -x "$bin/$suite-tests" ]; then
        echo "== $suite tests on this host's adapter" >&2
        "$bin/$suite-tests" --skip real_smollm2 --test-threads 1 >&2
    fi
done

[ -z "$llama" ] && [ -x "$bin/llama-bench-vulkan" ] && llama=$bin/llama-bench-vulkan
[ "$no_llama" = 1 ] && llama=
if [ -n "$llama" ] && [ ! -x "$llama" ]; then
    echo "bench-vulkan: --llama $llama is not an executable (build it with scripts/build-llama-cpp.sh --vulkan)" >&2
    exit 2
fi

# llama-bench's JSON for one test: prints its average tok/s. Without a Vulkan device llama.cpp
# quietly runs on the CPU; that is an error here.
llama_tps() {
    "$llama" "$@" -ngl 99 -r "$runs" -o json | "${PYTHON:-python3}" -c 'import json, sys
test = json.load(sys.stdin)[0]
if not test.get("gpu_info"):
    sys.exit("bench-vulkan: llama-bench found no Vulkan GPU (it ran on the CPU)")
print("llama-bench on %s: %.1f tok/s" % (test["gpu_info"], test["avg_ts"]), file=sys.stderr)
print(test["avg_ts"])'
}

# The GPU's clocks and temperature before a measurement, where the driver shows them: a GPU
# that has just woken up runs its first measurement at a fraction of its clocks.
gpu_clocks() {
    if command -v nvidia-smi >/dev/null; then
        echo "clocks: $(nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader 2>/dev/null | head -1)" >&2
    else
        local freq
        for freq in /sys/class/drm/card*/gt_cur_freq_mhz /sys/class/drm/card*/device/tile*/gt*/freq0/cur_freq; do
            [ -r "$freq" ] && echo "clocks: $freq = $(cat "$freq") MHz" >&2
        done
    fi
    return 0
}

# The best of several rounds' RESULT lines of one engine (ours, or the peer's made from its
# llama-bench figures): the highest prefill and the highest decode (each round's are already
# medians or averages of --runs), the rest from the first round.
best_of() {
    "${PYTHON:-python3}" -c 'import json, sys
rounds = [json.loads(r) for r in sys.argv[1:] if r]
if not rounds:
    sys.exit(1)
best = dict(rounds[0])
for key in ("prefill_tps", "decode_tps"):
    best[key] = max(r[key] for r in rounds)
if best.get("bound_tps"):
    best["decode_pct_of_bound"] = round(100 * best["decode_tps"] / best["bound_tps"], 1)
best["rounds"] = len(rounds)
print(json.dumps(best, separators=(",", ":")))' "$@"
}

summary=()
ratios=()
[ "${#device_lists[@]}" -gt 0 ] || device_lists=(auto)
peer_split=()
last_list=${device_lists[${#device_lists[@]}-1]}
[[ "$last_list" == *,* ]] && peer_split=(-sm layer)

# Warm-up: one short run of each engine on the first file, not counted.
if [ "$warmup" = 1 ]; then
    echo "== warm-up (not counted): ${files[0]}" >&2
    gpu_clocks
    "$bin/bench" "${files[0]}" --prompt "$prompt" --decode 16 --runs 1 --devices "${device_lists[0]}" >/dev/null ||
        echo "bench-vulkan: the warm-up run failed" >&2
    if [ -n "$llama" ]; then
        "$llama" -m "${files[0]}" -p "$prompt" -n 0 -ngl 99 -r 1 "${peer_split[@]}" >/dev/null 2>&1 ||
            echo "bench-vulkan: the peer's warm-up run failed" >&2
    fi
    gpu_clocks
fi

for f in "${files[@]}"; do
    first_result=
    for list in "${device_lists[@]}"; do
        echo "== vulkan (--devices $list): $f" >&2
        dev_args=(--devices "$list")
        [ -n "$split" ] && [[ "$list" == *,* ]] && dev_args+=(--split "$split")
        # Ours and the peer take turns, round after round, so that neither gets all the
        # measurements of a cold or a hot GPU; each keeps its best round.
        round_results=()
        peer_rounds=()
        for round in $(seq "$rounds"); do
            echo "-- round $round of $rounds: vulkan (--devices $list)" >&2
            gpu_clocks
            out=$("$bin/bench" "$f" --prompt "$prompt" --decode "$decode" --runs "$runs" "${dev_args[@]}" | tee >(cat >&2))
            round_results+=("$(echo "$out" | grep '^RESULT ' | sed 's/^RESULT //')")
            # The peer runs after the last device list's rounds only.
            if [ -n "$llama" ] && [ "$list" = "$last_list" ]; then
                echo "-- round $round of $rounds: llama.cpp vulkan" >&2
                gpu_clocks
                # A failing peer (e.g. a missing library on this host) is reported, not fatal.
                if pp=$(llama_tps -m "$f" -p "$prompt" -n 0 "${peer_split[@]}") && tg=$(llama_tps -m "$f" -p 0 -n "$decode" -d "$prompt" "${peer_split[@]}"); then
                    peer_rounds+=("{\"model\":\"$f\",\"engine\":\"llama.cpp-vulkan\",\"prefill_tps\":$pp,\"decode_tps\":$tg}")
                else
                    echo "bench-vulkan: llama-bench failed on $f in round $round" >&2
                fi
            fi
        done
        ours=$(best_of "${round_results[@]}")
        summary+=("$ours")
        if [ -z "$first_result" ]; then
            first_result=$ours
        else
            ratios+=("$("${PYTHON:-python3}" -c 'import json, sys
a, b, lists = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3:]
print("%s: --devices %s / --devices %s: decode %.2f (%.1f / %.1f tok/s), prefill %.2f, crossing %.3f ms per decoded token, greedy tokens %s" % (
    a["model"].rsplit("/", 1)[-1], lists[1], lists[0], a["decode_tps"] / b["decode_tps"], a["decode_tps"], b["decode_tps"],
    a["prefill_tps"] / b["prefill_tps"], a["cross_ms_per_decode_token"],
    "equal" if a["greedy_tokens"] == b["greedy_tokens"] else "DIFFER"))' "$ours" "$first_result" "${device_lists[0]}" "$list")")
        fi
    done
    if [ -n "$llama" ]; then
        if [ "${#peer_rounds[@]}" -gt 0 ]; then
            peer=$(best_of "${peer_rounds[@]}")
            echo "RESULT $peer" >&2
            summary+=("$peer")
            ratios+=("$("${PYTHON:-python3}" -c 'import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print("%s: ours / llama.cpp vulkan: decode %.2f (%.1f / %.1f tok/s), prefill %.2f (%.1f / %.1f tok/s)" % (
    a["model"].rsplit("/", 1)[-1], a["decode_tps"] / b["decode_tps"], a["decode_tps"], b["decode_tps"],
    a["prefill_tps"] / b["prefill_tps"], a["prefill_tps"], b["prefill_tps"]))' "$ours" "$peer")")
        else
            echo "bench-vulkan: llama-bench failed on $f; no ratio for it" >&2
        fi
    fi
    if [ "$cpu" = 1 ]; then
        echo "== cpu: $f" >&2
        out=$("$bin/bench" "$f" --cpu --prompt 64 --decode "$cpu_decode" --runs 1 | tee >(cat >&2))
        summary+=("$(echo "$out" | grep '^RESULT ' | sed 's/^RESULT //')")
    fi
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
[ "${#ratios[@]}" -gt 0 ] && printf '%s\n' "${ratios[@]}"
exit 0

#!/usr/bin/env bash
# The CUDA engine on an NVIDIA GPU host: checks it, then benchmarks it against our Vulkan
# engine on the same GPU and against llama.cpp's CUDA backend (built there from packed sources).
#
# On the GPU host (no Rust, no network; nvcc, cmake, python3 with numpy there):
#   scripts/bench-cuda.sh --bin DIR [--smollm-part FILE] [--types q8_0,q4_0,q4_k_m]
#                         [--shapes llama-1b,llama-8b] [--prompt N] [--decode N] [--runs N]
#                         [--budget SECONDS]
# Here, to make DIR (see docs/cuda.md for the two calls that carry it):
#   scripts/bench-cuda.sh --pack DIR --model-dir DIR2
#
# Steps on the host, in order; each prints a line starting with RESULT or CHECK:
#  0. xpu-probe on the real machine recommends exo-cuda, and `--device auto` names its engine;
#  1. the plain xpu-runner (built without CUDA) hands `--device cuda` over to xpu-runner-cuda;
#  2. `generate --device cuda` gives the CPU engine's greedy tokens on SmolLM2 for 5 prompts
#     (the model is requantized to Q4_0 and split in two, since no single call carries 64 MiB:
#     DIR2/smollm2.part-a travels in a first call and waits in --smollm-part, DIR has the rest);
#  3. `serve --device cuda` answers the openai client (chat, streaming, a completion);
#  4. decode and prefill tok/s of ours on CUDA (candle), ours on Vulkan and llama.cpp's CUDA
#     backend on random-weight files in real Llama shapes (scripts/make-bench-gguf.py; K-quant
#     mixes made with the peer's llama-quantize), then the ratios;
#  5. step 2 again on the same weights in F32 (made with the peer's llama-quantize: Q4_0 values
#     are exact in F32), which leaves out the engines' different activation rounding.
# The peer builds in the background (scripts/build-llama-cpp.sh --cuda, all cores) while steps
# 1-3 and our benchmarks run. --budget (default 540 s) stops starting new benchmarks so that
# the run ends inside one 10-minute call; whatever did not run is named.
# Prefill is <prompt> tokens from an empty cache, decode <decode> tokens after the prompt, for
# all three (llama-bench -p / -n -d).
set -uo pipefail
cd "$(dirname "$0")/.."

bin=
smollm_part=
types=q8_0,q4_0,q4_k_m
shapes=llama-1b,llama-8b
prompt=512
decode=128
runs=3
budget=540
pack=
model_dir=
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=$2; shift 2 ;;
        --smollm-part) smollm_part=$2; shift 2 ;;
        --types) types=$2; shift 2 ;;
        --shapes) shapes=$2; shift 2 ;;
        --prompt) prompt=$2; shift 2 ;;
        --decode) decode=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --budget) budget=$2; shift 2 ;;
        --pack) pack=$2; shift 2 ;;
        --model-dir) model_dir=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-cuda: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

cache=${XPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpu}

if [ -n "$pack" ]; then
    set -e
    [ -n "$model_dir" ] || { echo "bench-cuda: --pack needs --model-dir (where the first call's part goes)" >&2; exit 2; }
    target=${CARGO_TARGET_DIR:-target}
    mkdir -p "$pack" "$model_dir"
    cuda_bin=$(scripts/build-cuda.sh)
    cargo build --release -p xpu-runner --features vulkan
    # Compressed: the CUDA binary is 78 MB stripped, 12 MB in xz.
    strip -o "$pack/xpu-runner" "$target/release/xpu-runner"
    strip -o "$pack/xpu-runner-cuda" "$cuda_bin"
    cargo build --release -p xpu-probe
    strip -o "$pack/xpu-probe" "$target/release/xpu-probe"
    xz -f -T0 "$pack/xpu-runner" "$pack/xpu-runner-cuda" "$pack/xpu-probe"
    python=${PYTHON:-python3}
    [ -x "$cache/venv-gguf/bin/python" ] && python=$cache/venv-gguf/bin/python
    model=${XPU_TEST_MODEL:-$(scripts/fetch-model.sh)}
    # The bench files take SmolLM2's tokenizer from a GGUF that holds only its keys (~2 MiB).
    "$python" -P - "$model" "$pack/reference.gguf" <<'PY'
import sys
sys.path.insert(0, "scripts")
import gguf
from gguf_common import copy_tokenizer
reader = gguf.GGUFReader(sys.argv[1])
writer = gguf.GGUFWriter(sys.argv[2], "llama", use_temp_file=False)
copy_tokenizer("bench-cuda", writer, reader)
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file(progress=False)
writer.close()
PY
    # SmolLM2 in Q4_0 (every tensor), the smallest file both engines run, split in two.
    quantize=${XPU_LLAMA_CPP_BIN:-$cache/llama.cpp-b11434/build/bin}/llama-quantize
    smol=$(mktemp -d)
    "$quantize" --allow-requantize --pure "$model" "$smol/smollm2.gguf" Q4_0 >/dev/null
    split -b 56M -a 1 "$smol/smollm2.gguf" "$smol/part-"
    mv "$smol/part-a" "$model_dir/smollm2.part-a"
    mv "$smol/part-b" "$pack/smollm2.part-b"
    sha256sum <"$smol/smollm2.gguf" | cut -d' ' -f1 >"$pack/smollm2.sha256"
    rm -rf "$smol"
    scripts/build-llama-cpp.sh --pack-source "$pack/llama-sources.tar.xz"
    # Python packages the host lacks (the openai client, gguf) and the Vulkan loader.
    mkdir -p "$pack/wheels"
    (cd "$pack/wheels" && python3 -m pip download -q --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
        openai==3.54.0 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 anyio==4.16.0 \
        idna==3.21 typing_extensions==4.16.0 h11==0.16.0 certifi==2026.10.19.post1 \
        pydantic==2.14.4 pydantic_core==2.50.5 jiter==0.19.0 annotated_types==0.8.0 \
        typing_inspection==0.4.5 sniffio==1.3.1 distro==1.9.0 gguf==0.19.0)
    # The Vulkan loader, and the GL dispatch libraries that NVIDIA's Vulkan driver loads.
    (cd "$pack" && apt-get download -q libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >/dev/null)
    ls -la "$pack" "$model_dir"
    du -sh "$pack" "$model_dir"
    exit 0
fi

[ -n "$bin" ] || { echo "bench-cuda: give --bin DIR (made by --pack) or --pack DIR" >&2; exit 2; }
bin=$(cd "$bin" && pwd)
start=$SECONDS
work=${TMPDIR:-/tmp}/xpu-bench-cuda
mkdir -p "$work"
summary=()
check() { echo "CHECK $*"; summary+=("CHECK $*"); }
over_budget() { [ $((SECONDS - start)) -ge "$budget" ]; }

# The two binaries side by side, as installed: xpu-runner hands CUDA over to its neighbour.
exe=$work/bin
mkdir -p "$exe"
for b in xpu-runner xpu-runner-cuda xpu-probe; do
    [ -f "$bin/$b.xz" ] && xz -dc "$bin/$b.xz" >"$exe/$b" && chmod +x "$exe/$b"
done

# --- the host: the driver, CUDA 13's libraries, the Vulkan loader, python packages ---
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
roots=(/opt /usr/local /usr/lib /usr/lib64)
cuda_lib=$(find "${roots[@]}" -name 'libcublas.so.13' 2>/dev/null | head -n1)
if [ -n "$cuda_lib" ]; then
    for lib in libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
        found=$(find "${roots[@]}" -name "$lib" 2>/dev/null | head -n1)
        [ -n "$found" ] && LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$(dirname "$found")
    done
    export LD_LIBRARY_PATH=$(dirname "$cuda_lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    echo "CUDA libraries: $LD_LIBRARY_PATH"
fi
# The carried Vulkan loader and GL dispatch libraries (NVIDIA's Vulkan driver needs both).
for deb in "$bin"/*.deb; do dpkg -x "$deb" /; done
ldconfig
# Where no driver manifest is installed system-wide, name the driver's own.
ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 ||
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
python3 -m pip install -q --no-index --no-deps --no-compile --target "$work/site" "$bin"/wheels/*.whl
site=$work/site

# --- the peer, in the background on every core ---
peer_log=$work/peer.log
(
    mkdir -p "$work/cache" && tar -C "$work/cache" -xJf "$bin/llama-sources.tar.xz" &&
        XPU_CACHE=$work/cache XPU_BUILD_JOBS=$(nproc) scripts/build-llama-cpp.sh --cuda
) >"$peer_log" 2>&1 &
peer_pid=$!

# --- the benchmark files without K-quants, in the background ---
models=$work/models
mkdir -p "$models"
gen() {
    PYTHONPATH=$site python3 - --out "$models" --reference "$bin/reference.gguf" "$@" <<'PY'
import importlib.util, sys
sys.path.insert(0, "scripts")  # gguf_common.py beside the generator
spec = importlib.util.spec_from_file_location("make_bench_gguf", "scripts/make-bench-gguf.py")
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)
gen.ensure_gguf = lambda *args: None
sys.argv = ["make-bench-gguf.py", *sys.argv[1:]]
gen.main()
PY
}
plain_types=$(tr ',' '\n' <<<"$types" | grep -v '_k' | paste -sd, -)
quant_types=$(tr ',' '\n' <<<"$types" | grep '_k' | paste -sd, -)
# One job per shape: the 1B files are ready long before the 8B one.
gen_pids=()
for shape in ${shapes//,/ }; do
    t=$plain_types
    [ "$shape" = llama-8b ] && t=
    # The K-quant mixes are made from the Q8_0 file.
    [ -n "$quant_types" ] && t=${t:+$t,}q8_0
    [ -n "$t" ] || continue
    gen --shape "$shape" --types "$(tr ',' '\n' <<<"$t" | sort -u | paste -sd, -)" >"$work/gen-$shape.log" 2>&1 &
    gen_pids+=("$shape:$!")
done
wait_gen() { # shape
    local g
    for g in "${gen_pids[@]}"; do [ "${g%%:*}" = "$1" ] && wait "${g#*:}"; done
    return 0
}

# --- 0. the probe's facts from this machine ---
if [ -x "$exe/xpu-probe" ]; then
    "$exe/xpu-probe" --format json >"$work/facts.json" 2>"$work/probe.log"
    variant=$(python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))["recommendation"]
print(r["variant"], "|", "; ".join(r["reasons"]))' "$work/facts.json" 2>>"$work/probe.log")
    case "$variant" in
        exo-cuda*) check "ok xpu-probe on this host recommends $variant" ;;
        *) check "FAIL xpu-probe on this host recommends ${variant:-nothing} (see $work/probe.log)" ;;
    esac
    "$exe/xpu-probe" --format text 2>&1 | head -n 12
fi

# --- 1. the handoff ---
ver=$("$exe/xpu-runner-cuda" --version 2>&1) && check "xpu-runner-cuda starts: $ver" ||
    check "FAIL xpu-runner-cuda does not start: $ver"

# --- 2. greedy tokens against the CPU engine on SmolLM2 ---
smol=$work/smollm2.gguf
if [ -n "$smollm_part" ] && [ -f "$smollm_part" ]; then
    cat "$smollm_part" "$bin/smollm2.part-b" >"$smol"
fi
# greedy_against_cpu FILE LABEL DIR: how many of the five prompts give the same 32 greedy
# tokens on CUDA and on the CPU engine; each engine's answer with its 8 most likely tokens per
# step goes to $work/compare/DIR{cuda,cpu}/N.json, for scripts/compare-llama.py --ours-json
# (llama.cpp's log-probabilities on the same file, computed where it runs).
greedy_against_cpu() {
    local file=$1 label=$2 dir=$3 p cuda cpu same=0 i=0 verdict=FAIL
    local prompts=("The capital of France is" "def fibonacci(n):" "Once upon a time, in a small village,"
        "The three primary colors are" "To make a cup of tea, first")
    mkdir -p "$work/compare/${dir}cuda" "$work/compare/${dir}cpu"
    ids() { # device
        "$exe/xpu-runner" generate --model "$file" --prompt "$p" --max-tokens 32 --temperature 0 \
            --json --logprobs 8 --device "$1" 2>>"$work/generate.log" | tee "$work/compare/$dir$1/$i.json" |
            python3 -c 'import json, sys
r = json.load(sys.stdin)
print(r["device"], file=sys.stderr)
print(",".join(map(str, r["tokens"])))' 2>>"$work/devices.log"
    }
    for p in "${prompts[@]}"; do
        i=$((i + 1))
        cuda=$(ids cuda)
        cpu=$(ids cpu)
        if [ -n "$cuda" ] && [ "$cuda" = "$cpu" ]; then
            same=$((same + 1))
        else
            echo "differs on \"$p\" ($label): cuda [$cuda] cpu [$cpu]"
        fi
    done
    [ "$same" -ge 4 ] && verdict=ok
    check "$verdict generate --device cuda (through the plain xpu-runner) = cpu greedy tokens on $label: $same of 5 prompts"
}

smol_ok=
if [ -f "$smol" ] && [ "$(sha256sum <"$smol" | cut -d' ' -f1)" = "$(cat "$bin/smollm2.sha256")" ]; then
    smol_ok=1
    greedy_against_cpu "$smol" "SmolLM2 Q4_0" ""
    sort "$work/devices.log" | uniq -c
    auto=$("$exe/xpu-runner" generate --model "$smol" --prompt "Hello" --max-tokens 4 --temperature 0 \
        --json --device auto 2>>"$work/generate.log" | python3 -c 'import json, sys; print(json.load(sys.stdin)["device"])')
    check "info generate --device auto on this host runs on: ${auto:-nothing (see $work/generate.log)}"
    tail -n 3 "$work/generate.log"
else
    check "SKIPPED SmolLM2: --smollm-part missing or the joined file's sha256 differs (the first call carries it)"
fi

# --- 3. serve --device cuda and the openai client ---
if [ -f "$smol" ]; then
    port=52999
    "$exe/xpu-runner" serve --model "$smol" --device cuda --port "$port" >"$work/serve.log" 2>&1 &
    serve_pid=$!
    PYTHONPATH=$site python3 - "$port" <<'PY' && check "ok serve --device cuda answers the openai client" || check "FAIL serve --device cuda with the openai client"
import sys, time, urllib.request
import openai
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(240):
    try:
        urllib.request.urlopen(base + "/health", timeout=1)
        break
    except Exception:
        time.sleep(0.5)
client = openai.OpenAI(base_url=base + "/v1", api_key="none")
model = client.models.list().data[0].id
chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is 2+2?"}],
                                      max_tokens=24, temperature=0)
print("chat:", repr(chat.choices[0].message.content), chat.usage)
assert chat.choices[0].message.content and chat.usage.completion_tokens > 0
text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=16,
    temperature=0, stream=True) if c.choices)
print("stream:", repr(text))
assert text
done = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
print("completion:", repr(done.choices[0].text))
assert done.choices[0].text
health = urllib.request.urlopen(base + "/health").read().decode()
print("health:", health)
assert "cuda" in health
PY
    kill "$serve_pid" 2>/dev/null
    wait "$serve_pid" 2>/dev/null
    grep -E 'device|hand' "$work/serve.log" | head -n 5
fi

# --- 4. benchmarks ---
ours() { # file device -> {"decode_tps":..,"prefill_tps":..} or nothing
    "$exe/xpu-runner-cuda" bench --model "$1" --device "$2" --prompt-tokens "$prompt" \
        --gen-tokens "$decode" --repetitions "$runs" --json 2>>"$work/bench.log" | python3 -c 'import json, sys
r = json.load(sys.stdin)
print(json.dumps({"device": r["device"], "prefill_tps": r["prefill_tokens_per_second"], "decode_tps": r["decode_tokens_per_second"]}))'
}
llama_tps() {
    "$work/llama-bench" "$@" -ngl 99 -r "$runs" -o json 2>>"$work/bench.log" | python3 -c 'import json, sys
t = json.load(sys.stdin)[0]
if not t.get("gpu_info"):
    sys.exit("llama-bench found no CUDA GPU")
print(t["avg_ts"])'
}
peer_ready() {
    [ -x "$work/llama-bench" ] && return 0
    kill -0 "$peer_pid" 2>/dev/null && return 1
    local peer_bin
    peer_bin=$(tail -n 1 "$peer_log")
    [ -x "$peer_bin/llama-bench" ] || return 1
    cp "$peer_bin/llama-bench" "$peer_bin/llama-quantize" "$work/" && return 0
}
# Each file's figures by name; the peer's may come later than ours (the peer builds meanwhile).
declare -A fig_cuda fig_vulkan fig_pp fig_tg
benched=()
bench_file() { # file: ours on both engines, then the peer if it is built
    local f=$1 name
    name=$(basename "$f")
    fig_cuda[$name]=$(ours "$f" cuda)
    fig_vulkan[$name]=$(ours "$f" vulkan)
    echo "RESULT $name ours-cuda ${fig_cuda[$name]}"
    echo "RESULT $name ours-vulkan ${fig_vulkan[$name]}"
    benched+=("$f")
    peer_ready && bench_peer "$f"
    return 0
}
bench_peer() { # file
    local f=$1 name pp tg
    name=$(basename "$f")
    if pp=$(llama_tps -m "$f" -p "$prompt" -n 0) && tg=$(llama_tps -m "$f" -p 0 -n "$decode" -d "$prompt"); then
        echo "RESULT $name llama.cpp-cuda {\"prefill_tps\": $pp, \"decode_tps\": $tg}"
        fig_pp[$name]=$pp
        fig_tg[$name]=$tg
    else
        echo "RESULT $name llama.cpp-cuda failed (see $work/bench.log)"
    fi
}
summarise() { # file
    local name cu vk pp tg
    name=$(basename "$1")
    cu=${fig_cuda[$name]:-} vk=${fig_vulkan[$name]:-} pp=${fig_pp[$name]:-} tg=${fig_tg[$name]:-}
    summary+=("$(python3 - "$name" "$cu" "$vk" "$pp" "$tg" <<'PY'
import json, sys
name, cu, vk, pp, tg = sys.argv[1:]
cu = json.loads(cu) if cu else None
vk = json.loads(vk) if vk else None
def fig(r, k):
    return "%.1f" % r[k] if r else "-"
def ratio(a, b):
    return "%.2f" % (a / b) if a and b else "-"
peer = {"prefill_tps": float(pp), "decode_tps": float(tg)} if pp and tg else None
line = "%s: decode tok/s cuda %s vulkan %s llama.cpp %s | prefill cuda %s vulkan %s llama.cpp %s" % (
    name, fig(cu, "decode_tps"), fig(vk, "decode_tps"), fig(peer, "decode_tps"),
    fig(cu, "prefill_tps"), fig(vk, "prefill_tps"), fig(peer, "prefill_tps"))
line += " || cuda/vulkan decode %s prefill %s; cuda/llama.cpp decode %s prefill %s; vulkan/llama.cpp decode %s prefill %s" % (
    ratio(cu and cu["decode_tps"], vk and vk["decode_tps"]), ratio(cu and cu["prefill_tps"], vk and vk["prefill_tps"]),
    ratio(cu and cu["decode_tps"], peer and peer["decode_tps"]), ratio(cu and cu["prefill_tps"], peer and peer["prefill_tps"]),
    ratio(vk and vk["decode_tps"], peer and peer["decode_tps"]), ratio(vk and vk["prefill_tps"], peer and peer["prefill_tps"]))
print(line)
PY
)")
}

files=()
for shape in ${shapes//,/ }; do
    [ "$shape" = llama-8b ] && continue
    for t in ${plain_types//,/ }; do files+=("$models/$shape-random.$(tr a-z A-Z <<<"$t").gguf"); done
done
for f in "${files[@]}"; do
    wait_gen "$(basename "$f" | sed 's/-random.*//')"
    over_budget && { summary+=("NOT RUN (budget): $(basename "$f")"); continue; }
    [ -f "$f" ] && bench_file "$f" || summary+=("NOT RUN (no file): $f; see $work/gen-*.log")
done
# The K-quant files need the peer's llama-quantize.
if [ -n "$quant_types" ]; then
    while ! peer_ready && kill -0 "$peer_pid" 2>/dev/null && ! over_budget; do sleep 5; done
    if peer_ready; then
        echo "peer built after $((SECONDS - start)) s"
        for shape in ${shapes//,/ }; do
            wait_gen "$shape"
            for t in ${quant_types//,/ }; do
                over_budget && { summary+=("NOT RUN (budget): $shape $t"); continue; }
                f=$(gen --shape "$shape" --types "$t" --quantize "$work/llama-quantize" 2>>"$work/gen-$shape.log" | tail -n 1)
                [ -f "$f" ] && bench_file "$f" || summary+=("NOT RUN (no file): $shape $t; see $work/gen-$shape.log")
            done
        done
    else
        summary+=("NOT RUN: the K-quant files ($quant_types): the peer did not finish; tail of its log:")
        summary+=("$(tail -n 5 "$peer_log")")
    fi
fi
# The files that ran before the peer was built get its figures now.
for f in "${benched[@]}"; do
    [ -n "${fig_tg[$(basename "$f")]:-}" ] && continue
    while ! peer_ready && kill -0 "$peer_pid" 2>/dev/null && ! over_budget; do sleep 5; done
    peer_ready && ! over_budget && bench_peer "$f"
done
# --- 5. the same greedy check on SmolLM2's Q4_0 weights in F32 ---
# The Q4_0 values are exact in F32, so this is the same model without the engines' differing
# activation rounding (int8 activations in the quantized products): what is left is summation
# order. On the Q4_0 file two correct engines part on a near-tie (docs/cuda.md, Correctness).
if [ -n "$smol_ok" ] && peer_ready; then
    if "$work/llama-quantize" --allow-requantize "$smol" "$work/smollm2-f32.gguf" F32 >>"$work/gen-f32.log" 2>&1; then
        greedy_against_cpu "$work/smollm2-f32.gguf" "SmolLM2 Q4_0 weights in F32" f32-
    else
        check "FAIL could not make the F32 SmolLM2 (see $work/gen-f32.log)"
    fi
fi
kill "$peer_pid" 2>/dev/null
for f in "${benched[@]}"; do summarise "$f"; done

echo
echo "== summary ($((SECONDS - start)) s)"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
printf '%s\n' "${summary[@]}"

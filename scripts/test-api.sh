#!/usr/bin/env bash
# Runs the HTTP API suite (tests/api/) against the real `xpu-runner serve` binary
# and the real test model, with the official `openai` Python client, and the dashboard
# page in headless Chromium (Debian's chromium and chromium-driver, through Selenium).
#
# - Creates (once) a virtual environment with pinned pytest, openai and selenium outside
#   the repository: ${XPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpu}/venv-api
# - The dashboard tests save screenshots under target/ (XPU_SCREENSHOT_DIR).
# - Builds the release binary unless XPU_RUNNER_BIN points at one.
# - Gets the model from XPU_TEST_MODEL or scripts/fetch-model.sh.
# Extra arguments go to pytest (e.g. `scripts/test-api.sh -k bad_input -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${XPU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpu}
venv=$cache/venv-api
requirements=tests/api/requirements.txt
stamp=$venv/.requirements.sha256
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "test-api: creating $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" || {
        echo "test-api: python3 -m venv failed; install python3-venv (Debian: apt-get install -y python3-venv)" >&2
        exit 1
    }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" > "$stamp"
fi

if [ -z "${XPU_RUNNER_BIN:-}" ]; then
    # Same features as scripts/test.sh, so that the binary it built is reused.
    cargo build --release --locked -p xpu-runner --features vulkan >&2
    XPU_RUNNER_BIN=$PWD/target/release/xpu-runner
fi
export XPU_RUNNER_BIN
# The dashboard tests write hardware facts for the probe's fixture trees with the real
# probe; scripts/test.sh's cargo test has built it next to the runner.
if [ -z "${XPU_PROBE_BIN:-}" ]; then
    XPU_PROBE_BIN=$(dirname "$XPU_RUNNER_BIN")/xpu-probe
    if [ ! -x "$XPU_PROBE_BIN" ]; then
        cargo build --release --locked -p xpu-probe >&2
        XPU_PROBE_BIN=$PWD/target/release/xpu-probe
    fi
fi
export XPU_PROBE_BIN
XPU_TEST_MODEL=${XPU_TEST_MODEL:-$(scripts/fetch-model.sh)}
export XPU_TEST_MODEL

exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/api "$@"

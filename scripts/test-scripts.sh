#!/usr/bin/env bash
# Checks what the helper scripts answer to bad options: each must exit 2 with a message that
# names the option, before it builds or downloads anything. Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

failures=0
# expect_refusal MESSAGE ARGS...: scripts/bench-vulkan.sh ARGS must exit 2 printing MESSAGE.
expect_refusal() {
    local message=$1 status=0 err
    shift
    err=$(scripts/bench-vulkan.sh "$@" 2>&1 >/dev/null) || status=$?
    if [ "$status" != 2 ] || [[ "$err" != *"$message"* ]]; then
        echo "test-scripts: FAIL: bench-vulkan.sh $* exited $status with: $err" >&2
        failures=$((failures + 1))
    else
        echo "test-scripts: ok: bench-vulkan.sh $* is refused: $err" >&2
    fi
}
expect_refusal "take a positive number, not '0'" --rounds 0
expect_refusal "take a positive number, not 'two'" --runs two
expect_refusal "take a positive number, not '-5'" --prompt -5
expect_refusal "unknown option --round" --round 2

help=$(scripts/bench-vulkan.sh --help)
for option in --rounds --no-warmup; do
    if [[ "$help" != *"$option"* ]]; then
        echo "test-scripts: FAIL: bench-vulkan.sh --help does not mention $option" >&2
        failures=$((failures + 1))
    fi
done

[ "$failures" = 0 ] || exit 1
echo "test-scripts: ok: all script checks" >&2

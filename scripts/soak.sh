#!/usr/bin/env bash
# Soak test of `xpu-runner serve` (a long benchmark, not part of CI): 8 streaming clients
# for 10 minutes against `--parallel 8`, sampling the server's resident memory. After a
# warm-up it fails if
#   - the RSS at the end is 2 % or more above the RSS at the end of the warm-up,
#   - any request errored (a non-200 answer or a broken connection), or
#   - any answered response is incomplete (no finish_reason, or a stream without [DONE]).
# Prints the figures either way; exits 1 on a failure.
#
# Env: XPU_SOAK_SECONDS (600), XPU_SOAK_CLIENTS (8), XPU_SOAK_WARMUP (a fifth of the
#      duration, at least 10 s), XPU_SOAK_MAX_TOKENS (64), XPU_SOAK_THREADS (2),
#      XPU_SOAK_CTX (2048), XPU_SOAK_RSS_EVERY (5: seconds between RSS samples),
#      XPU_TEST_MODEL (default scripts/fetch-model.sh),
#      XPU_RUNNER_BIN (default: build target/release/xpu-runner).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${XPU_SOAK_SECONDS:-600}
clients=${XPU_SOAK_CLIENTS:-8}
max_tokens=${XPU_SOAK_MAX_TOKENS:-64}
threads=${XPU_SOAK_THREADS:-2}
ctx=${XPU_SOAK_CTX:-2048}
every=${XPU_SOAK_RSS_EVERY:-5}
warmup=${XPU_SOAK_WARMUP:-$(( seconds / 5 > 10 ? seconds / 5 : 10 ))}
model=${XPU_TEST_MODEL:-$(scripts/fetch-model.sh)}
say() { echo "soak: $*" >&2; }
for v in seconds clients max_tokens threads ctx every warmup; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { say "$v must be a positive integer, got '${!v}'"; exit 2; }
done
[ "$warmup" -lt "$seconds" ] || { say "the warm-up ($warmup s) must be shorter than the run ($seconds s)"; exit 2; }
[ -f "$model" ] || { say "no model file at $model (set XPU_TEST_MODEL)"; exit 1; }
if [ -z "${XPU_RUNNER_BIN:-}" ]; then
    cargo build --release -p xpu-runner >&2
    XPU_RUNNER_BIN=$PWD/target/release/xpu-runner
fi

serve=(serve --model "$model" --model-id soak --device cpu --threads "$threads" --ctx "$ctx" --max-queue "$clients")
if "$XPU_RUNNER_BIN" serve --help | grep -q -- '--parallel'; then
    serve+=(--parallel "$clients")
else
    say "this xpu-runner has no --parallel: it serves one request at a time"
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
say "$clients clients x ${seconds}s (warm-up ${warmup}s), max_tokens $max_tokens, $threads threads, model $(basename "$model")"
result=$(python3 scripts/load_bench.py --name soak --port "$port" --model-id soak --clients "$clients" \
    --seconds "$seconds" --max-tokens "$max_tokens" --rss-every "$every" --warmup "$warmup" -- \
    "$XPU_RUNNER_BIN" "${serve[@]}" --port "$port")

python3 - "$result" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
warm, end = r["rss_after_warmup_mib"], r["rss_end_mib"]
growth = (end - warm) / warm * 100 if warm else float("nan")
rss = [mib for _, mib in r["rss_samples_mib"]]
print(f"requests:   {sum(r['status'].values())} ({r['status']}), {r['generated_tokens']} tokens, {r['tokens_per_s']} tok/s")
print(f"TTFT:       p50 {r['ttft_p50_s']} s, p99 {r['ttft_p99_s']} s")
print(f"errors:     {r['errors']}")
print(f"incomplete: {r['incomplete']}")
print(f"RSS MiB:    start {r['rss_start_mib']}, after warm-up {warm}, end {end} "
      f"(growth {growth:+.2f} %), min {min(rss, default=0)}, max {max(rss, default=0)} over {len(rss)} samples")
failures = []
if warm is None:
    failures.append("no RSS after the warm-up")
elif growth >= 2:
    failures.append(f"RSS grew {growth:.2f} % after the warm-up (limit: under 2 %)")
if r["errors"]:
    failures.append(f"{r['errors']} requests errored")
if r["incomplete"]:
    failures.append(f"{r['incomplete']} responses were incomplete")
if not r["generated_tokens"]:
    failures.append("no tokens were generated")
for f in failures:
    print(f"soak: FAIL: {f}", file=sys.stderr)
if failures:
    sys.exit(1)
print("soak: ok", file=sys.stderr)
PY

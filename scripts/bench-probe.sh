#!/usr/bin/env bash
# Benchmarks a full `xpu-probe` run without Level Zero (sysfs + procfs + recommendation + JSON)
# against `lspci -vmm -k` (pciutils) on this machine, and prints the median wall times and
# their ratio.
#
# Usage: scripts/bench-probe.sh [RUNS] [--root DIR]
#   RUNS        number of timed runs of each command (default 50), after 3 warm-up runs
#   --root DIR  probe a captured tree instead of / (lspci still reads this machine)
# The target is a median below 20 ms. pciutils is installed with apt-get when missing and
# this runs as root; otherwise the peer is skipped with a note.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=50
root=/
while [ $# -gt 0 ]; do
    case "$1" in
        --root) root=${2:?--root needs a directory}; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *[!0-9]*|'') echo "bench-probe.sh: unknown argument '$1' (expected RUNS or --root DIR)" >&2; exit 2 ;;
        *) runs=$1; shift ;;
    esac
done
[ "$runs" -ge 1 ] || { echo "bench-probe.sh: RUNS must be at least 1" >&2; exit 2; }

echo "building xpu-probe (release)..." >&2
cargo build --release --locked -p xpu-probe --quiet
probe="${CARGO_TARGET_DIR:-target}/release/xpu-probe"

# Median of a command's wall time in milliseconds, measured with bash's EPOCHREALTIME
# (no helper process inside the timed window).
median_ms() {
    local times=() i start end
    for i in 1 2 3; do "$@" >/dev/null 2>&1 || true; done
    for ((i = 0; i < runs; i++)); do
        start=$EPOCHREALTIME
        "$@" >/dev/null 2>&1 || true
        end=$EPOCHREALTIME
        times+=("$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", (e - s) * 1000 }')")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '
        { v[NR] = $1 }
        END {
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.2f %.2f %.2f\n", m, v[1], v[NR]
        }'
}

read -r probe_median probe_min probe_max < <(median_ms "$probe" --root "$root" --no-level-zero)
pci_count=$("$probe" --root "$root" --no-level-zero --format text | sed -n 's/^PCI functions: //p')
printf 'xpu-probe --no-level-zero (root %s, %s PCI functions): median %s ms (min %s, max %s) over %d runs\n' \
    "$root" "$pci_count" "$probe_median" "$probe_min" "$probe_max" "$runs"
awk -v m="$probe_median" 'BEGIN { if (m < 20) print "target < 20 ms: met"; else print "target < 20 ms: MISSED" }'

if ! command -v lspci >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing pciutils for the peer measurement..." >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pciutils >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pciutils >/dev/null 2>&1; } \
            || true
    fi
fi
if command -v lspci >/dev/null 2>&1; then
    read -r peer_median peer_min peer_max < <(median_ms lspci -vmm -k)
    printf 'lspci -vmm -k (peer):  median %s ms (min %s, max %s) over %d runs\n' \
        "$peer_median" "$peer_min" "$peer_max" "$runs"
    awk -v p="$probe_median" -v q="$peer_median" \
        'BEGIN { printf "ratio xpu-probe / lspci: %.2f (below 1 means xpu-probe is faster)\n", p / q }'
else
    echo "peer skipped: lspci (pciutils) is not installed and could not be installed here"
fi

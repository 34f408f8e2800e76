#!/usr/bin/env bash
# Integration test of the llama.cpp RPC cluster that services.xpu-cluster runs, on this machine:
#
#   1. two RPC workers (llama.cpp's ggml-rpc-server) on loopback ports;
#   2. a head, `llama-server --rpc 127.0.0.1:P1,127.0.0.1:P2`, on the test model (SmolLM2);
#   3. the greedy answer through the head's OpenAI API equals that of a single-node llama-server,
#      and the head's log shows the model's weights on both workers;
#   4. a head whose worker is unreachable exits with an error (the module restarts it until the
#      workers are up).
#
# The workers' and the head's arguments are rendered by lib/cluster.nix, the functions that
# write the module's ExecStart= lines, so this checks those command lines against the real
# binaries. scripts/test.sh runs it.
#
# Env: XPU_LLAMA_CPP_BIN  llama.cpp b11434 built with -DGGML_RPC=ON (default: scripts/build-llama-cpp.sh)
#      XPU_TEST_MODEL     the GGUF model (default: scripts/fetch-model.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "test-cluster: FAIL: $*" >&2; exit 1; }
pass() { echo "test-cluster: ok: $*" >&2; }

XPU_LLAMA_CPP_BIN=${XPU_LLAMA_CPP_BIN:-$(scripts/build-llama-cpp.sh)}
XPU_TEST_MODEL=${XPU_TEST_MODEL:-$(scripts/fetch-model.sh)}
export XPU_TEST_MODEL
rpc_server=$XPU_LLAMA_CPP_BIN/ggml-rpc-server
llama_server=$XPU_LLAMA_CPP_BIN/llama-server
for b in "$rpc_server" "$llama_server"; do
    [ -x "$b" ] || fail "$b is missing; build llama.cpp with scripts/build-llama-cpp.sh (it enables -DGGML_RPC=ON)"
done
command -v nix-instantiate >/dev/null || fail "nix-instantiate not found; install Debian's nix-bin (scripts/apt-packages.txt lists it)"

work=$(mktemp -d)
pids=()
# Every process this script started is stopped on every exit path (success, failure, signal).
cleanup() {
    local pid deadline
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + 10))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
worker1_port=$(free_port)
worker2_port=$(free_port)
head_port=$(free_port)
single_port=$(free_port)
dead_port=$(free_port)

# The module's command lines, with this machine's ports and model.
args_json=$(nix-instantiate --eval --strict --json -E "
  let
    c = (import ./lib).cluster;
    model = builtins.getEnv \"XPU_TEST_MODEL\";
    worker = port: c.workerArgs { listenAddress = \"127.0.0.1\"; inherit port; };
    # --log-verbosity 4: llama.cpp logs where the weights went (\"RPC0[host:port] model buffer size\").
    head = workers: port: c.headArgs {
      inherit model workers port;
      host = \"127.0.0.1\";
      parallel = 1;
      extraFlags = [ \"--log-verbosity\" \"4\" ];
    };
  in {
    worker1 = worker $worker1_port;
    worker2 = worker $worker2_port;
    head = head [ \"127.0.0.1:$worker1_port\" \"127.0.0.1:$worker2_port\" ] $head_port;
    unreachable = head [ \"127.0.0.1:$dead_port\" ] $dead_port;
  }" 2>"$work/nix.log") || { cat "$work/nix.log" >&2; fail "lib/cluster.nix did not evaluate"; }
args_of() {
    python3 -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])[sys.argv[2]]))' "$args_json" "$1"
}
mapfile -t worker1_args < <(args_of worker1)
mapfile -t worker2_args < <(args_of worker2)
mapfile -t head_args < <(args_of head)
mapfile -t unreachable_args < <(args_of unreachable)

# Starts a program in the background with its output in $work/NAME.log.
start() {
    local name=$1
    shift
    "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
    eval "${name}_pid=$!"
}

# Waits (at most $3 seconds) until TCP port $2 accepts connections, while process $1 lives.
wait_for_port() {
    local name=$1 port=$2 limit=$3 pid_var="${1}_pid"
    local deadline=$((SECONDS + limit))
    until python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$port" 2>/dev/null; do
        kill -0 "${!pid_var}" 2>/dev/null || { tail -n 30 "$work/$name.log" >&2; fail "$name exited before listening on $port"; }
        [ "$SECONDS" -lt "$deadline" ] || { tail -n 30 "$work/$name.log" >&2; fail "$name did not listen on $port within ${limit}s"; }
        sleep 0.5
    done
}

# Waits (at most $3 seconds) until llama-server on port $2 reports /health 200 (model loaded).
wait_for_health() {
    local name=$1 port=$2 limit=$3 pid_var="${1}_pid"
    local deadline=$((SECONDS + limit))
    until python3 -c 'import sys, urllib.request; urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=5)' "$port" 2>/dev/null; do
        kill -0 "${!pid_var}" 2>/dev/null || { tail -n 40 "$work/$name.log" >&2; fail "$name exited before it was ready"; }
        [ "$SECONDS" -lt "$deadline" ] || { tail -n 40 "$work/$name.log" >&2; fail "$name was not ready within ${limit}s"; }
        sleep 1
    done
}

# The greedy answer of the OpenAI chat endpoint on port $1, as JSON {content, completion_tokens}.
ask() {
    python3 - "$1" <<'PY'
import json, sys, urllib.request
request = urllib.request.Request(
    f"http://127.0.0.1:{sys.argv[1]}/v1/chat/completions",
    data=json.dumps({
        "messages": [{"role": "user", "content": "Name three primary colors and explain why they are called primary."}],
        "max_tokens": 48,
        "temperature": 0,
        "seed": 1,
    }).encode(),
    headers={"Content-Type": "application/json"},
)
reply = json.load(urllib.request.urlopen(request, timeout=300))
print(json.dumps({
    "content": reply["choices"][0]["message"]["content"],
    "completion_tokens": reply["usage"]["completion_tokens"],
}))
PY
}

# 1. The workers.
start worker1 "$rpc_server" "${worker1_args[@]}"
start worker2 "$rpc_server" "${worker2_args[@]}"
wait_for_port worker1 "$worker1_port" 30
wait_for_port worker2 "$worker2_port" 30
pass "two RPC workers listen on 127.0.0.1:$worker1_port and 127.0.0.1:$worker2_port"

# 2. The head.
start head "$llama_server" "${head_args[@]}"
wait_for_health head "$head_port" 300
pass "the head (llama-server ${head_args[*]}) is ready"

# 3. The same question, to the cluster and to a single node.
cluster_answer=$(ask "$head_port") || { tail -n 40 "$work/head.log" >&2; fail "the head did not answer"; }
# The head first: a head whose worker goes away aborts (the module's unit restarts it).
kill "$head_pid" 2>/dev/null || true
wait "$head_pid" 2>/dev/null || true
kill "$worker1_pid" "$worker2_pid" 2>/dev/null || true
# An RPC worker computes on its device's default buffers (ggml-rpc.cpp allocates with
# ggml_backend_get_default_buffer_type), never on the CPU backend's repacked or AMX weight
# layouts. --no-repack gives the single node those same kernels. (On CPUs that advertise AMX
# where the kernel does not grant it, the AMX path would also stop llama-server with SIGILL.)
start single "$llama_server" --model "$XPU_TEST_MODEL" --host 127.0.0.1 --port "$single_port" --parallel 1 --no-repack
wait_for_health single "$single_port" 300
single_answer=$(ask "$single_port") || { tail -n 40 "$work/single.log" >&2; fail "the single node did not answer"; }
echo "test-cluster: cluster: $cluster_answer" >&2
echo "test-cluster: single:  $single_answer" >&2
[ "$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["completion_tokens"])' "$cluster_answer")" -gt 0 ] \
    || fail "the cluster's answer has no tokens"
[ "$cluster_answer" = "$single_answer" ] || fail "the cluster's greedy answer differs from the single node's"
pass "the cluster's greedy answer equals the single node's"

# The weights went to the workers: llama.cpp logs a model buffer on each RPC device, named
# after its endpoint.
for port in "$worker1_port" "$worker2_port"; do
    grep -E "RPC[0-9]+\[127\.0\.0\.1:$port\] model buffer size" "$work/head.log" >&2 \
        || { tail -n 60 "$work/head.log" >&2; fail "the head's log shows no model buffer on the worker at 127.0.0.1:$port"; }
done
grep -E "offloaded [0-9]+/[0-9]+ layers" "$work/head.log" >&2 || fail "the head's log does not say how many layers it offloaded"
pass "the head placed model weights on both workers"

# 4. A head whose worker does not answer exits with an error.
# (It aborts; the braces keep the shell's "Aborted" job message out of the output.)
set +e
{ timeout 60 "$llama_server" "${unreachable_args[@]}" >"$work/unreachable.log" 2>&1; } 2>/dev/null
status=$?
set -e
[ "$status" -ne 124 ] || fail "a head with an unreachable worker was still running after 60s"
[ "$status" -ne 0 ] || fail "a head with an unreachable worker exited with status 0"
grep -q "127.0.0.1:$dead_port" "$work/unreachable.log" || { tail -n 20 "$work/unreachable.log" >&2; fail "the error does not name the unreachable worker"; }
pass "a head with an unreachable worker exits with status $status and names it"
pass "all cluster tests"

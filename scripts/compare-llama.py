#!/usr/bin/env python3
"""Agreement between xpu-runner and llama.cpp on the same GGUF: greedy tokens and log-probabilities.

For each prompt, xpu-runner renders and tokenizes it (chat template or raw text) and
generates greedily (`generate --json --logprobs K`, which also reports the K most likely
tokens of every step with their log-probabilities). The very same prompt token ids go to
llama.cpp's `llama-server` (`/completion` with a token-array prompt, top-k 1,
`n_probs` K: the log-probabilities of its K most likely tokens, from the full softmax of its
raw logits). The script prints, per prompt:
  - how many of the first N generated tokens agree (and whether llama.cpp tokenizes the
    prompt text to the same ids);
  - for each of the first --logit-steps steps, the largest |difference| between our and
    llama.cpp's log-probability over llama.cpp's K most likely tokens at that step. Both
    engines see the same tokens at every compared step: where the greedy paths part, llama.cpp
    is asked again with our tokens as its prompt.
Log-probabilities are logits minus the log of the softmax sum, so a difference in them is a
difference in logits, shifted equally for all tokens of a step by the change of that sum.

It exits non-zero when fewer than --min-agree prompts agree on all N tokens, or when any
compared step differs by more than --tolerance (see docs/runner.md for the tolerance's
justification).

Usage: scripts/compare-llama.py [--model GGUF] [--llama-model GGUF] [--device cpu|vulkan]
                                [--runner BIN] [--llama-bin DIR] [--tokens 16] [--threads 2]
                                [--min-agree 4] [--logprobs 8] [--logit-steps 4]
                                [--tolerance 0.25] [--chat TEXT]... [--raw TEXT]...
                                [--ours-json DIR]
Defaults: the model from scripts/fetch-model.sh, target/release/xpu-runner, and the
llama.cpp build from scripts/build-llama-cpp.sh (or XPU_LLAMA_CPP_BIN). --device vulkan on a
host without a GPU needs XPU_RUNNER_ALLOW_CPU_ADAPTER=1 (lavapipe). --llama-model runs
llama.cpp on another file than ours (the negative test: a copy whose rope_freqs are ones).
--ours-json DIR compares answers made elsewhere (DIR/1.json, ... in prompt order, as
scripts/bench-cuda.sh keeps them for the CUDA engine on a GPU host) with llama.cpp here.
"""

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPTS = [
    ("chat", "What is the capital of France?"),
    ("chat", "Write a haiku about the sea."),
    ("chat", "Give me three tips for learning to program."),
    ("raw", "Once upon a time, in a small village by the river,"),
    ("raw", "The three primary colors are"),
]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body, timeout=300):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def wait_healthy(port, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"llama-server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("llama-server did not become healthy")


def ours(args, model, kind, text, index):
    if args.ours_json:
        # Answers made elsewhere (e.g. on a GPU host by scripts/bench-cuda.sh): INDEX.json.
        path = os.path.join(args.ours_json, f"{index}.json")
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--ours-json: cannot read {path}: {e}")
    flag = "--chat" if kind == "chat" else "--prompt"
    out = run([args.runner, "generate", "--model", model, flag, text, "--temperature", "0",
               "--max-tokens", str(args.tokens), "--threads", str(args.threads), "--device", args.device,
               "--json", "--logprobs", str(args.logprobs)])
    return json.loads(out)


def completion(port, ids, n, k):
    """llama.cpp's greedy continuation of `ids`: (tokens, per step [(id, logprob)] of its top k)."""
    body = {
        "prompt": ids,
        "n_predict": n,
        "temperature": 0.0,
        "top_k": 1,
        "samplers": ["top_k"],
        "cache_prompt": True,
        "return_tokens": True,
        "n_probs": k,
        "post_sampling_probs": False,
        "stream": False,
    }
    r = post(port, "/completion", body)
    steps = [[(p["id"], p["logprob"]) for p in step["top_logprobs"]] for step in r.get("completion_probabilities", [])]
    return r["tokens"], steps


def top_probs(port, ids, k=3):
    """llama.cpp's k most likely next tokens after `ids`, as (id, probability)."""
    _, steps = completion(port, ids, 1, k)
    return [(t, math.exp(lp)) for t, lp in steps[0]]


def max_diff(theirs_top, ours_top):
    """Largest |our logprob - theirs| over llama.cpp's top tokens; a token missing from our top
    list counts at our K-th value (an upper bound of its log-probability)."""
    mine = dict(ours_top)
    floor = min(mine.values()) if mine else -math.inf
    worst = 0.0
    for tid, lp in theirs_top:
        worst = max(worst, abs(mine.get(tid, floor) - lp))
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--llama-model", help="the file llama.cpp runs (default: --model)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "vulkan"])
    ap.add_argument("--ours-json", metavar="DIR",
                    help="read our answers from DIR/1.json, DIR/2.json, ... (generate --json --logprobs K, "
                         "one per prompt in order) instead of running xpu-runner")
    ap.add_argument("--runner", default=os.path.join(ROOT, "target/release/xpu-runner"))
    ap.add_argument("--llama-bin", default=os.environ.get("XPU_LLAMA_CPP_BIN"))
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-agree", type=int, default=4)
    ap.add_argument("--logprobs", type=int, default=8, help="tokens per step whose log-probabilities are compared")
    ap.add_argument("--logit-steps", type=int, default=4, help="steps whose log-probabilities are compared")
    ap.add_argument("--tolerance", type=float, default=0.25, help="largest allowed log-probability difference")
    ap.add_argument("--chat", action="append", default=[], help="a chat prompt (repeatable; replaces the default prompts)")
    ap.add_argument("--raw", action="append", default=[], help="a raw prompt (repeatable; replaces the default prompts)")
    ap.add_argument("--llama-args", default="",
                    help="extra llama-server arguments, e.g. '-fa off -ctk f32 -ctv f32'")
    args = ap.parse_args()

    model = args.model or run([os.path.join(ROOT, "scripts/fetch-model.sh")])
    llama_model = args.llama_model or model
    llama_bin = args.llama_bin or run([os.path.join(ROOT, "scripts/build-llama-cpp.sh")])
    if not args.ours_json and not os.access(args.runner, os.X_OK):
        raise SystemExit(f"{args.runner} is missing; run: cargo build --release -p xpu-runner --features vulkan")
    prompts = [("chat", t) for t in args.chat] + [("raw", t) for t in args.raw] or PROMPTS
    min_agree = min(args.min_agree, len(prompts))

    port = free_port()
    server = subprocess.Popen(
        [os.path.join(llama_bin, "llama-server"), "-m", llama_model, "--port", str(port), "--host", "127.0.0.1",
         # -nr: no weight repacking, so llama.cpp runs its plain CPU kernels (a native build's
         # AMX repack faults with SIGILL on virtual machines that hide AMX state).
         "-c", "2048", "-t", str(args.threads), "-np", "1", "--no-webui", "-nr"] + args.llama_args.split(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    full = 0
    worst = 0.0
    try:
        wait_healthy(port, server)
        print(f"model: {os.path.basename(model)}" + (f" (llama.cpp: {os.path.basename(llama_model)})" if llama_model != model else "")
              + f"; device {'from ' + args.ours_json if args.ours_json else args.device}; first {args.tokens} greedy tokens, same prompt ids; "
              f"log-probabilities of llama.cpp's top {args.logprobs} over the first {args.logit_steps} steps, tolerance {args.tolerance}")
        for i, (kind, text) in enumerate(prompts, 1):
            mine = ours(args, model, kind, text, i)
            prompt_ids = mine["prompt_tokens"]
            ref, ref_steps = completion(port, prompt_ids, args.tokens, args.logprobs)
            a, b = mine["tokens"][: args.tokens], ref[: args.tokens]
            # llama.cpp lists the end-of-sequence token it stopped at; we do not.
            if mine["finish_reason"] == "stop" and len(b) == len(a) + 1 and b[: len(a)] == a:
                b = b[: len(a)]
            agree = 0
            for x, y in zip(a, b):
                if x != y:
                    break
                agree += 1
            # Both stopping at the same end-of-sequence token counts as full agreement.
            complete = agree == max(len(a), len(b))
            full += complete
            tok = post(port, "/tokenize", {"content": mine["prompt_text"], "add_special": True,
                                           "parse_special": True})["tokens"] if mine["prompt_text"] else None
            same_tok = "n/a" if tok is None else ("yes" if tok == prompt_ids else "NO")
            print(f"prompt {i} ({kind}, {len(prompt_ids)} prompt tokens): {agree}/{max(len(a), len(b))} agree"
                  f"{' (full)' if complete else ''}; llama.cpp tokenizes the prompt the same: {same_tok}")
            # Log-probabilities, step by step, on our tokens.
            diffs = []
            for step, mine_step in enumerate(mine["steps"][: args.logit_steps]):
                if step <= agree and step < len(ref_steps):
                    theirs_top = ref_steps[step]
                else:
                    _, s = completion(port, prompt_ids + a[:step], 1, args.logprobs)
                    theirs_top = s[0]
                d = max_diff(theirs_top, mine_step["top_logprobs"])
                diffs.append(d)
                worst = max(worst, d)
            print("  largest |logprob difference| per step: " + " ".join(f"{d:.4f}" for d in diffs)
                  + (" OVER TOLERANCE" if any(d > args.tolerance for d in diffs) else ""))
            if not complete:
                print(f"  ours:      {a}\n  llama.cpp: {b}")
                if agree < min(len(a), len(b)):
                    # How close the decision was for llama.cpp at the first difference: a
                    # near-tie means rounding noise, a clear margin means a real error.
                    top = top_probs(port, prompt_ids + a[:agree])
                    mine_p = dict(top).get(a[agree])
                    print(f"  at token {agree}: llama.cpp's top probabilities "
                          + ", ".join(f"{t}: {p:.3f}" for t, p in top)
                          + f"; ours picked {a[agree]}"
                          + (f" (llama.cpp p={mine_p:.3f})" if mine_p is not None else " (not in its top 3)"))
            print(f"  text: {mine['text']!r}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    tokens_ok = full >= min_agree
    logits_ok = worst <= args.tolerance
    print(f"result: {full}/{len(prompts)} prompts agree fully (target >= {min_agree}); "
          f"largest log-probability difference {worst:.4f} (tolerance {args.tolerance})"
          f" -> {'PASS' if tokens_ok and logits_ok else 'FAIL'}")
    sys.exit(0 if tokens_ok and logits_ok else 1)


if __name__ == "__main__":
    main()

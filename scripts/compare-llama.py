#!/usr/bin/env python3
"""Greedy-decoding agreement between xpu-runner and llama.cpp on the same GGUF.

For each prompt, xpu-runner renders and tokenizes it (chat template or raw text)
and generates greedily; the very same prompt token ids are then sent to llama.cpp's
`llama-server` (`/completion` with a token-array prompt, top-k 1, `return_tokens`).
The script prints, per prompt, how many of the first N generated tokens agree, and
whether llama.cpp tokenizes the prompt text to the same ids. It exits non-zero when
fewer than --min-agree prompts agree fully.

Usage: scripts/compare-llama.py [--model GGUF] [--runner BIN] [--llama-bin DIR]
                                [--tokens 16] [--threads 2] [--min-agree 4]
Defaults: the model from scripts/fetch-model.sh, target/release/xpu-runner, and the
llama.cpp build from scripts/build-llama-cpp.sh.
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


def ours(runner, model, kind, text, n, threads):
    flag = "--chat" if kind == "chat" else "--prompt"
    out = run([runner, "generate", "--model", model, flag, text, "--temperature", "0",
               "--max-tokens", str(n), "--threads", str(threads), "--json"])
    return json.loads(out)


def theirs(port, prompt_ids, n):
    body = {
        "prompt": prompt_ids,
        "n_predict": n,
        "temperature": 0.0,
        "top_k": 1,
        "samplers": ["top_k"],
        "cache_prompt": False,
        "return_tokens": True,
        "stream": False,
    }
    return post(port, "/completion", body)["tokens"]


def top_probs(port, ids, k=3):
    """llama.cpp's k most likely next tokens after `ids`, as (id, probability)."""
    body = {"prompt": ids, "n_predict": 1, "temperature": 0.0, "top_k": 1, "samplers": ["top_k"],
            "cache_prompt": False, "n_probs": k, "post_sampling_probs": False, "stream": False}
    probs = post(port, "/completion", body)["completion_probabilities"][0]["top_logprobs"]
    return [(p["id"], math.exp(p["logprob"])) for p in probs]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--runner", default=os.path.join(ROOT, "target/release/xpu-runner"))
    ap.add_argument("--llama-bin")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-agree", type=int, default=4)
    ap.add_argument("--llama-args", default="",
                    help="extra llama-server arguments, e.g. '-fa off -ctk f32 -ctv f32'")
    args = ap.parse_args()

    model = args.model or run([os.path.join(ROOT, "scripts/fetch-model.sh")])
    llama_bin = args.llama_bin or run([os.path.join(ROOT, "scripts/build-llama-cpp.sh")])
    if not os.access(args.runner, os.X_OK):
        raise SystemExit(f"{args.runner} is missing; run: cargo build --release -p xpu-runner")

    port = free_port()
    server = subprocess.Popen(
        [os.path.join(llama_bin, "llama-server"), "-m", model, "--port", str(port), "--host", "127.0.0.1",
         "-c", "2048", "-t", str(args.threads), "-np", "1", "--no-webui"] + args.llama_args.split(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    full = 0
    try:
        wait_healthy(port, server)
        print(f"model: {os.path.basename(model)}; first {args.tokens} greedy tokens, same prompt ids")
        for i, (kind, text) in enumerate(PROMPTS, 1):
            mine = ours(args.runner, model, kind, text, args.tokens, args.threads)
            prompt_ids = mine["prompt_tokens"]
            ref = theirs(port, prompt_ids, args.tokens)
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
    print(f"result: {full}/{len(PROMPTS)} prompts agree fully (target >= {args.min_agree})")
    sys.exit(0 if full >= args.min_agree else 1)


if __name__ == "__main__":
    main()

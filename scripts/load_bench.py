#!/usr/bin/env python3
"""Load benchmark driver (used by scripts/load-bench.sh; standard library only).

Starts one server command, waits for its /health, runs N concurrent streaming
chat clients for D seconds, and prints one JSON line of figures: TTFT p50/p99,
aggregate generated tokens per second, count per status, how many answered
responses were incomplete (no `finish_reason`, or a stream without `data: [DONE]`),
and the server's memory (VmRSS and RssAnon+VmSwap) at start and end. With
`--rss-every S` it also samples VmRSS every S seconds, and with `--warmup W` it
reports the RSS at W seconds into the load (scripts/soak.sh uses both).
"""

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time


def memory_kib(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmSwap"):
                fields[key] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("RssAnon", 0) + fields.get("VmSwap", 0)


def wait_health(port, proc, limit=300):
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"load-bench: the server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("load-bench: the server never became healthy")


def client(port, model, args, stop_at, results, lock):
    body = json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": args.prompt}],
        "max_tokens": args.max_tokens,
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
    })
    while time.time() < stop_at:
        sent = time.time()
        ttft = None
        tokens = 0
        usage_tokens = None
        finished = False
        done = False
        status = "error"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            status = str(resp.status)
            if resp.status != 200:
                resp.read()
                retry = resp.getheader("Retry-After")
                time.sleep(min(float(retry), 2.0) if retry else 0.5)
            else:
                for raw in resp:
                    line = raw.decode("utf-8", "replace").strip()
                    if line == "data: [DONE]":
                        done = True
                        continue
                    if not line.startswith("data: "):
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        usage_tokens = chunk["usage"]["completion_tokens"]
                    for choice in chunk.get("choices") or []:
                        if choice.get("finish_reason"):
                            finished = True
                        if (choice.get("delta") or {}).get("content"):
                            tokens += 1
                            if ttft is None:
                                ttft = time.time() - sent
            conn.close()
        except (OSError, http.client.HTTPException, ValueError):
            status = "error"
            time.sleep(0.5)
        with lock:
            results["status"][status] = results["status"].get(status, 0) + 1
            if status == "200" and not (finished and done):
                results["incomplete"] += 1
            if status == "200":
                results["tokens"] += usage_tokens if usage_tokens is not None else tokens
                if ttft is not None:
                    results["ttft"].append(ttft)


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model-id", required=True)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="Write a short story about a lighthouse keeper.")
    ap.add_argument("--rss-every", type=float, default=0, help="sample VmRSS every S seconds (0: off)")
    ap.add_argument("--warmup", type=float, default=0, help="report the RSS this many seconds into the load")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    log = open(f"/tmp/load-bench-{args.name}.log", "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_health(args.port, proc)
        rss_start, anon_start = memory_kib(proc.pid)
        results = {"status": {}, "tokens": 0, "ttft": [], "incomplete": 0}
        lock = threading.Lock()
        started = time.time()
        stop_at = started + args.seconds
        threads = [threading.Thread(target=client, args=(args.port, args.model_id, args, stop_at, results, lock))
                   for _ in range(args.clients)]
        for t in threads:
            t.start()
        samples = []
        rss_warm = None
        while any(t.is_alive() for t in threads):
            now = time.time() - started
            if args.rss_every and (not samples or now - samples[-1][0] >= args.rss_every):
                samples.append((round(now, 1), round(memory_kib(proc.pid)[0] / 1024, 1)))
            if args.warmup and rss_warm is None and now >= args.warmup:
                rss_warm = round(memory_kib(proc.pid)[0] / 1024, 1)
            time.sleep(0.1)
        for t in threads:
            t.join()
        elapsed = time.time() - started
        rss_end, anon_end = memory_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(json.dumps({
        "name": args.name,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "ttft_p50_s": round(percentile(results["ttft"], 50), 3),
        "ttft_p99_s": round(percentile(results["ttft"], 99), 3),
        "generated_tokens": results["tokens"],
        "tokens_per_s": round(results["tokens"] / elapsed, 1),
        "status": results["status"],
        "errors": sum(n for status, n in results["status"].items() if status != "200"),
        "incomplete": results["incomplete"],
        "rss_start_mib": round(rss_start / 1024, 1),
        "rss_end_mib": round(rss_end / 1024, 1),
        "anon_swap_start_mib": round(anon_start / 1024, 1),
        "anon_swap_end_mib": round(anon_end / 1024, 1),
        "rss_after_warmup_mib": rss_warm,
        "rss_samples_mib": samples,
    }))


if __name__ == "__main__":
    main()

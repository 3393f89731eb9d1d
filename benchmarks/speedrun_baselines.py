"""Held-out compressor baselines of the speedrun, and how stable each held-out split makes them.

For each --val-fractions value, re-tokenizes a speedrun's curated documents with that held-out
fraction, then compresses every held-out document on its own with xz -9e, zstd -19 and zstd -19
with a dictionary trained on the training documents (pasture.baselines, byte-identical to the
command-line tools), and prints bits per byte with a bootstrap standard error over documents.

    python benchmarks/speedrun_baselines.py --run runs/speedrun --val-fractions 0.02,0.1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from pasture.baselines import code_lengths
from pasture.train.tokenize import tokenize_documents


def bootstrap_error(bits: np.ndarray, sizes: np.ndarray, draws: int, rng: np.random.Generator) -> float:
    """Standard deviation of total bits / total bytes over held-out sets resampled by document."""
    picks = rng.integers(0, len(sizes), (draws, len(sizes)))
    return float((bits[picks].sum(1) / sizes[picks].sum(1)).std())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a speedrun folder (curated/ and tokenizer/)")
    parser.add_argument("--val-fractions", default="0.02,0.1")
    parser.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args()
    tokenizer = args.run / "tokenizer" / "tokenizer.model"
    rng = np.random.default_rng(0)
    print("| held-out fraction | documents | bytes | largest document | xz -9e | zstd -19 | zstd -19 + dictionary |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for fraction in [float(x) for x in args.val_fractions.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            tokenize_documents([str(args.run / "curated" / "data")], tokenizer, tmp, val_fraction=fraction,
                               progress=False)
            lengths = code_lengths(tmp, tokenizer)
        sizes = lengths["bytes"]
        cells = [f"{lengths[k].sum() / sizes.sum():.4f} ± {bootstrap_error(lengths[k], sizes, args.bootstrap, rng):.4f}"
                 for k in ("xz", "zstd", "zstd_dict")]
        print(f"| {fraction} | {len(sizes)} | {sizes.sum():,} | {sizes.max() / sizes.sum():.1%} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""MinHash LSH quality vs exact Jaccard on planted near-duplicates.

  python benchmarks/minhash_quality.py [--bands 14 --rows 8 --ngram 5]

Base passages are Python standard-library sources; each planted copy has 0-6% of its
words replaced, giving true 5-gram Jaccard similarities from 1.0 down to ~0.5. Reports
recall at J >= 0.8, precision (share of found pairs with J >= 0.65 and with J >= 0.8),
the LSH curve predicted by 1 - (1 - J^rows)^bands per Jaccard bin, and the speed.
"""

from __future__ import annotations

import argparse
import random
import sysconfig
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from pasture.data.minhash import MinHasher, bucket_pairs, connected_roots, shingles


def corpus(bases: int, copies: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    base = [p.read_text(errors="replace")[:3000] for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
            if p.stat().st_size > 3000][:bases]
    docs = list(base)
    for i in range(copies):
        words = base[i % len(base)].split(" ")
        for j in rng.sample(range(len(words)), int(len(words) * rng.uniform(0, 0.06))):
            words[j] = f"w{rng.randrange(10**6)}"
        docs.append(" ".join(words))
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bands", type=int, default=14)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--bases", type=int, default=200)
    parser.add_argument("--copies", type=int, default=200)
    args = parser.parse_args()
    docs = corpus(args.bases, args.copies)
    hasher = MinHasher(args.ngram, args.bands, args.rows)
    t0 = time.perf_counter()
    keys = hasher.band_keys(docs)
    pairs = np.concatenate([bucket_pairs(keys[:, b], np.arange(len(docs), dtype=np.int64)) for b in range(args.bands)])
    nodes, roots = connected_roots(pairs)
    seconds = time.perf_counter() - t0
    root = dict(zip(nodes.tolist(), roots.tolist()))
    sets = [shingles(d, args.ngram) for d in docs]
    jaccard = {(a, b): len(sets[a] & sets[b]) / len(sets[a] | sets[b]) for a, b in combinations(range(len(docs)), 2)}
    found = {p for p in jaccard if p[0] in root and root.get(p[0]) == root.get(p[1])}
    true = {p for p, j in jaccard.items() if j >= 0.8}
    print(f"{len(docs)} docs, {len(jaccard):,} pairs; {args.bands} bands x {args.rows} rows over word {args.ngram}-grams")
    print(f"signatures + buckets + clusters: {seconds:.2f} s ({len(docs) / seconds:,.0f} docs/s, one core)")
    print(f"recall at J>=0.8: {len(true & found) / max(len(true), 1):.3f} ({len(true & found)}/{len(true)})")
    print(f"precision (found with J>=0.8): {len(true & found) / max(len(found), 1):.3f}; "
          f"(found with J>=0.65): {sum(jaccard[p] >= 0.65 for p in found) / max(len(found), 1):.3f}; found {len(found)}")
    print("| Jaccard bin | pairs | found | predicted |")
    print("|---|---:|---:|---:|")
    for lo in (0.5, 0.6, 0.7, 0.8, 0.9):
        bin_pairs = [p for p, j in jaccard.items() if lo <= j < lo + 0.1 + (lo == 0.9) * 0.01]
        if bin_pairs:
            mid = float(np.mean([jaccard[p] for p in bin_pairs]))
            predicted = 1 - (1 - mid**args.rows) ** args.bands
            print(f"| {lo:.1f}-{lo + 0.1:.1f} | {len(bin_pairs)} | {sum(p in found for p in bin_pairs)} | {predicted:.2f} |")


if __name__ == "__main__":
    main()

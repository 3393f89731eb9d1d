"""Phase 2, URL de-duplication (one task per slice of the URL-hash space): keep the most recent
crawl of each URL, ties to the smallest doc key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pasture.data.phases.ingest import url_hashes_path
from pasture.data.phases.shards import doc_key, save_npz, work_dir
from pasture.data.recipe import CurateConfig


@dataclass
class UrlRangeTask:
    range: int  # which slice of the URL-hash space
    shards: int  # how many ingested shards to read


@dataclass
class UrlDedupResult:
    removed: int


def _removals_path(config: CurateConfig, part: int) -> Path:
    return work_dir(config) / "url" / f"remove-r{part:03d}.npz"


def url_removals(config: CurateConfig, shard: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(removed doc keys sorted, the key each duplicates); only one shard's when `shard` is given."""
    keys, kept = [], []
    for part in range(config.url_dedup.hash_ranges):
        with np.load(_removals_path(config, part)) as f:
            key, kp = f["key"], f["kept"]
        if shard is not None:
            lo, hi = np.searchsorted(key, [doc_key(shard, 0), doc_key(shard + 1, 0)])
            key, kp = key[lo:hi], kp[lo:hi]
        keys.append(key)
        kept.append(kp)
    key, kp = np.concatenate(keys), np.concatenate(kept)
    order = np.argsort(key)
    return key[order], kp[order]


class UrlDedup:
    """URL keys of every shard -> per hash slice, the doc keys of older copies and the copy each yields to."""

    result_type = UrlDedupResult

    def __init__(self, config: CurateConfig) -> None:
        self.config = config

    def tasks(self, shards: int) -> dict[str, UrlRangeTask]:
        return {f"r{r:03d}": UrlRangeTask(r, shards) for r in range(self.config.url_dedup.hash_ranges)}

    def run(self, task: UrlRangeTask) -> UrlDedupResult:
        ranges, part = self.config.url_dedup.hash_ranges, task.range
        hashes, times, keys = [], [], []
        for shard in range(task.shards):
            with np.load(url_hashes_path(self.config, shard)) as f:
                mine = f["hash"] % np.uint64(ranges) == part
                hashes.append(f["hash"][mine])
                times.append(f["time"][mine])
                keys.append(doc_key(shard, f["position"][mine]))
        h, t, k = (np.concatenate(a) for a in (hashes, times, keys))
        order = np.lexsort((k, -t, h))
        h, k = h[order], k[order]
        first = np.r_[True, h[1:] != h[:-1]] if len(h) else np.empty(0, dtype=bool)
        kept = k[np.maximum.accumulate(np.where(first, np.arange(len(h)), 0))] if len(h) else k
        removed, kept_for = k[~first], kept[~first]
        order = np.argsort(removed)
        save_npz(_removals_path(self.config, part), key=removed[order], kept=kept_for[order])
        return UrlDedupResult(int(len(removed)))

"""Phases 3-4, MinHash near-duplicate removal, one class per step as in datatrove:

- `MinhashBuckets` (per band x hash slice): documents sharing a band key -> duplicate pairs;
- `MinhashLabelRound` (rounds of per-partition tasks): connected components by min-label
  propagation over hash-partitioned edges, until no label changes (`cluster_duplicates`);
- `MinhashRemovals` (per shard): every member but the smallest doc key of a cluster is removed.

The band keys come from ingest; the algorithms are in `pasture.data.minhash`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pasture.data.engine import LocalEngine, RayEngine, run_tasks
from pasture.data.minhash import bucket_pairs, lower_labels, min_label_messages, node_partition
from pasture.data.phases.ingest import band_keys_path
from pasture.data.phases.shards import SHARD_BITS, doc_key, save_npy, save_npz, shard_name, work_dir
from pasture.data.phases.url_dedup import url_removals
from pasture.data.recipe import CurateConfig


@dataclass
class BandTask:
    band: int
    range: int  # which slice of the band-key space
    shards: int


@dataclass
class BucketResult:
    pairs: int


@dataclass
class LabelRoundTask:
    partition: int
    round: int


@dataclass
class LabelRoundResult:
    changed: int  # nodes whose label went down this round; 0 everywhere means converged


@dataclass
class RemovalsTask:
    shard: int
    round: int  # the last (converged) round, whose labels are final


@dataclass
class RemovalsResult:
    removed: int
    clusters: int  # clusters whose kept document lies in this shard


@dataclass
class ClusterSummary:
    rounds: int
    clusters: int


def _components(config: CurateConfig) -> Path:
    return work_dir(config) / "minhash" / "components"


def _labels_path(config: CurateConfig, round_: int, partition: int) -> Path:
    return _components(config) / f"round{round_:03d}" / f"labels-p{partition:03d}.npz"


def _removals_path(config: CurateConfig, shard: int) -> Path:
    return work_dir(config) / "minhash" / "remove" / f"{shard_name(shard)}.npz"


def minhash_removals(config: CurateConfig, shard: int) -> tuple[np.ndarray, np.ndarray]:
    """(removed doc keys of one shard sorted, the root of each one's cluster)."""
    with np.load(_removals_path(config, shard)) as f:
        return f["key"], f["root"]


class MinhashBuckets:
    """One band, one slice of its key space: documents with equal band keys become (root, member) pairs.

    The pairs are written as directed edges in both directions, one file per node partition of
    the edge's source, so each clustering task later reads only its own partition.
    """

    result_type = BucketResult

    def __init__(self, config: CurateConfig) -> None:
        self.config = config

    def tasks(self, shards: int) -> dict[str, BandTask]:
        return {f"b{b:03d}-r{r:03d}": BandTask(b, r, shards)
                for b in range(self.config.minhash.bands) for r in range(self.config.minhash.hash_ranges)}

    def run(self, task: BandTask) -> BucketResult:
        config = self.config
        band, part, ranges = task.band, task.range, config.minhash.hash_ranges
        url_removed = url_removals(config)[0] if config.url_dedup.enabled else np.empty(0, np.int64)
        band_keys, keys = [], []
        for shard in range(task.shards):
            column = np.load(band_keys_path(config, shard), mmap_mode="r")[:, band]
            k = doc_key(shard, np.arange(len(column), dtype=np.int64))
            mine = (column % np.uint64(ranges) == part) & ~np.isin(k, url_removed)
            band_keys.append(np.asarray(column[mine]))
            keys.append(k[mine])
        pairs = bucket_pairs(np.concatenate(band_keys), np.concatenate(keys))
        edges = np.concatenate([pairs, pairs[:, ::-1]])
        partition_of_source = node_partition(edges[:, 0], config.minhash.cluster_partitions)
        for p in np.unique(partition_of_source).tolist():
            save_npy(_components(config) / "pairs" / f"p{p:03d}" / f"b{band:03d}-r{part:03d}.npy",
                     edges[partition_of_source == p])
        return BucketResult(int(len(pairs)))


class MinhashLabelRound:
    """One round of min-label propagation in one partition of the duplicate graph.

    Round 0 labels every node with itself; each later round lowers labels to the smallest one
    the neighbours sent in the round before. Nodes whose label changed send it along their
    edges, into one inbox per target partition. Memory: this partition's edges, labels and inbox.
    """

    result_type = LabelRoundResult

    def __init__(self, config: CurateConfig) -> None:
        self.config = config

    def tasks(self, round_: int) -> dict[str, LabelRoundTask]:
        return {f"p{p:03d}": LabelRoundTask(p, round_) for p in range(self.config.minhash.cluster_partitions)}

    def _partition_edges(self, partition: int) -> np.ndarray:
        """The distinct directed edges of one partition, sorted; the same pair found by many bands is kept once."""
        edges = np.empty((0, 2), dtype=np.int64)
        for path in sorted((_components(self.config) / "pairs" / f"p{partition:03d}").glob("b*-r*.npy")):
            edges = np.unique(np.concatenate([edges, np.load(path)]), axis=0)
        return edges

    def run(self, task: LabelRoundTask) -> LabelRoundResult:
        config = self.config
        partition, round_ = task.partition, task.round
        partitions, components = config.minhash.cluster_partitions, _components(config)
        edges_path = components / "edges" / f"p{partition:03d}.npy"
        if round_ == 0:
            edges = self._partition_edges(partition)
            save_npy(edges_path, edges)
            nodes = np.unique(edges[:, 0])
            labels = nodes.copy()
            changed = np.ones(len(nodes), dtype=bool)
        else:
            edges = np.load(edges_path)
            with np.load(_labels_path(config, round_ - 1, partition)) as f:
                nodes, previous = f["node"], f["label"]
            inbox = sorted((components / f"round{round_ - 1:03d}" / f"to-p{partition:03d}").glob("from-p*.npy"))
            messages = np.concatenate([np.load(p) for p in inbox]) if inbox else np.empty((0, 2), dtype=np.int64)
            labels = lower_labels(nodes, previous, messages[:, 0], messages[:, 1])
            changed = labels != previous
        save_npz(_labels_path(config, round_, partition), node=nodes, label=labels)
        targets, sent = min_label_messages(edges, nodes, labels, changed)
        target_partition = node_partition(targets, partitions)
        for q in np.unique(target_partition).tolist():
            mine = target_partition == q
            save_npy(components / f"round{round_:03d}" / f"to-p{q:03d}" / f"from-p{partition:03d}.npy",
                     np.stack([targets[mine], sent[mine]], axis=1))
        return LabelRoundResult(int(changed.sum()))


class MinhashRemovals:
    """One shard's removed doc keys and their cluster root, from the converged labels of every partition."""

    result_type = RemovalsResult

    def __init__(self, config: CurateConfig) -> None:
        self.config = config

    def tasks(self, shards: int, round_: int) -> dict[str, RemovalsTask]:
        return {shard_name(i): RemovalsTask(i, round_) for i in range(shards)}

    def run(self, task: RemovalsTask) -> RemovalsResult:
        keys, roots, clusters = [], [], 0
        for partition in range(self.config.minhash.cluster_partitions):
            with np.load(_labels_path(self.config, task.round, partition)) as f:
                nodes, labels = f["node"], f["label"]
            mine = (nodes >> SHARD_BITS) == task.shard
            removed = mine & (nodes != labels)
            keys.append(nodes[removed])
            roots.append(labels[removed])
            clusters += int((mine & ~removed).sum())
        key, root = np.concatenate(keys), np.concatenate(roots)
        order = np.argsort(key)
        save_npz(_removals_path(self.config, task.shard), key=key[order], root=root[order])
        return RemovalsResult(int(len(key)), clusters)


def cluster_duplicates(engine: LocalEngine | RayEngine, config: CurateConfig, shards: int) -> ClusterSummary:
    """Connected components of the duplicate graph in rounds of partition tasks, until no label changes.

    A round's files are deleted once the next round is done (nothing reads them again, even
    on resume); the round count is the longest distance from a cluster's root, plus two.
    """
    components, done = _components(config), work_dir(config) / "done" / "minhash_cluster"
    label_round = MinhashLabelRound(config)
    round_, changed = 0, 1
    while changed:
        results = run_tasks(engine, label_round, label_round.tasks(round_), done / f"round{round_:03d}",
                            f"minhash_cluster round {round_}")
        changed = sum(r.changed for r in results.values())
        shutil.rmtree(components / ("pairs" if round_ == 0 else f"round{round_ - 1:03d}"), ignore_errors=True)
        round_ += 1
    removals = MinhashRemovals(config)
    removed = run_tasks(engine, removals, removals.tasks(shards, round_ - 1), done / "removals", "minhash_removals")
    return ClusterSummary(round_, sum(r.clusters for r in removed.values()))

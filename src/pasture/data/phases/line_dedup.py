"""Phase 5, line de-duplication as in Llama 3: lines seen more than `max_count` times within a
bucket of `bucket_docs` surviving documents (of one language when per language) are removed.

- `LineCount` (per shard): line-hash counts per bucket over the documents that survive URL and MinHash;
- `LineMerge` (per bucket x hash slice): total counts; the frequent lines;
- `LineRemover`: applied by the filter phase, drops a document's frequent lines.

Buckets are numbered by a document's ordinal among the survivors (of its language), counting
shards in order, so each shard starts from `first_ordinals` and the buckets are the same on every engine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from pasture.documents import Document
from pasture.data.minhash import in_language, stable_hash
from pasture.data.phases.ingest import line_buckets_per_language, line_languages_path
from pasture.data.phases.shards import SHARD_BITS, save_npy, save_npz, shard_name, work_dir
from pasture.data.phases.survivors import shard_removals, surviving_docs
from pasture.data.recipe import CurateConfig
from pasture.errors import PastureError

Ordinals = dict[str | None, int]  # per bucket language (None: all languages together), a count of documents


@dataclass
class LineCountTask:
    shard: int
    first_ordinals: Ordinals  # the ordinal of the shard's first surviving document, per bucket language


@dataclass
class LineCountResult:
    buckets: list[str]  # the buckets this shard's documents fall in
    seconds: float


@dataclass
class LineMergeTask:
    bucket: str
    range: int  # which slice of the line-hash space
    shard_list: list[int]  # the shards that counted lines in this bucket


@dataclass
class LineMergeResult:
    frequent_lines: int


def line_hashes(lines: list[str], language: str | None = None) -> np.ndarray:
    """Stable hashes of stripped lines; 0 for blank lines, which are never counted or removed.

    With a `language`, the hashes are that language's own: the same line in two languages
    is counted (and removed) separately.
    """
    hashes = np.fromiter((stable_hash(s) if (s := line.strip()) else 0 for line in lines), dtype=np.uint64,
                         count=len(lines))
    return hashes if language is None else in_language(hashes, stable_hash(language))


def _line_language(config: CurateConfig, doc: Document) -> str | None:
    """The language a document's lines are hashed and bucketed in: the one identified at ingest
    (the [language] stage may retag later), or None when line de-duplication ignores language."""
    return doc.meta["language"] if config.line_dedup.per_language else None


def _counts_path(config: CurateConfig, shard: int) -> Path:
    return work_dir(config) / "lines" / "counts" / f"{shard_name(shard)}.npz"


def _frequent_path(config: CurateConfig, bucket: str, part: int) -> Path:
    return work_dir(config) / "lines" / "frequent" / f"{bucket}-r{part:03d}.npy"


def _frequent_lines(config: CurateConfig, bucket: str) -> np.ndarray:
    """The sorted hashes of the lines to remove in one bucket, over all its hash ranges."""
    parts = [np.load(_frequent_path(config, bucket, part)) for part in range(config.line_dedup.hash_ranges)]
    return np.sort(np.concatenate(parts))


def _surviving_counts(config: CurateConfig, shard: int, docs: int) -> Ordinals:
    """Documents of one shard that survive URL and MinHash de-duplication, per line-bucket language.

    The key is None when buckets count every language together, else the language identified at ingest.
    """
    removed = [key for key, _ in shard_removals(config, shard).values()]
    if not line_buckets_per_language(config):
        return {None: docs - sum(len(key) for key in removed)}
    path = line_languages_path(config, shard)
    if not path.exists():
        raise PastureError(f"{path} is missing: this run's ingest predates per-language line buckets; "
                           f"delete {work_dir(config)} and run again")
    with np.load(path) as f:
        names, index = f["names"], f["index"]
    alive = np.ones(len(index), dtype=bool)
    for key in removed:
        alive[key & ((1 << SHARD_BITS) - 1)] = False
    counts = np.bincount(index[alive], minlength=len(names))
    return {str(name): int(count) for name, count in zip(names, counts)}


def first_ordinals(config: CurateConfig, docs_per_shard: list[int]) -> list[Ordinals]:
    """Per shard, the ordinal of its first surviving document in each bucket language, counting shards in order."""
    counts = [_surviving_counts(config, shard, docs) for shard, docs in enumerate(docs_per_shard)]
    running = {language: 0 for shard_counts in counts for language in shard_counts}
    firsts = []
    for shard_counts in counts:
        firsts.append(dict(running))
        for language, count in shard_counts.items():
            running[language] += count
    return firsts


def _next_line_bucket(config: CurateConfig, ordinals: Ordinals, language: str | None) -> str:
    """The bucket name of the next surviving document of `language` (None: of any), counting it in `ordinals`.

    Llama 3 counts lines within buckets of `bucket_docs` documents; per language, those are documents of
    that language only, so a small language's lines are not spread over buckets sized by the big ones.
    """
    ordinal = ordinals[language]
    ordinals[language] = ordinal + 1
    bucket = f"b{ordinal // config.line_dedup.bucket_docs:05d}"
    return bucket if language is None else f"{quote(language, safe='')}-{bucket}"


class LineCount:
    """Count line hashes per bucket over the documents of one shard that survive de-duplication."""

    result_type = LineCountResult

    def __init__(self, config: CurateConfig) -> None:
        self.config = config

    def tasks(self, ordinals: list[Ordinals]) -> dict[str, LineCountTask]:
        return {shard_name(i): LineCountTask(i, first) for i, first in enumerate(ordinals)}

    def run(self, task: LineCountTask) -> LineCountResult:
        config = self.config
        ordinals = dict(task.first_ordinals)
        started = time.perf_counter()
        per_bucket: dict[str, list[np.ndarray]] = {}
        for doc in surviving_docs(config, task.shard):
            language = _line_language(config, doc)
            h = line_hashes(doc.text.split("\n"), language)
            per_bucket.setdefault(_next_line_bucket(config, ordinals, language), []).append(h[h != 0])
        arrays = {}
        for bucket, parts in per_bucket.items():
            hashes, counts = np.unique(np.concatenate(parts), return_counts=True)
            arrays[f"h{bucket}"], arrays[f"c{bucket}"] = hashes, counts.astype(np.int64)
        save_npz(_counts_path(config, task.shard), **arrays)
        return LineCountResult(sorted(per_bucket), time.perf_counter() - started)


class LineMerge:
    """Total counts for one bucket and hash slice; write the lines seen more than max_count times."""

    result_type = LineMergeResult

    def __init__(self, config: CurateConfig) -> None:
        self.config = config

    def tasks(self, counted: list[LineCountResult]) -> dict[str, LineMergeTask]:
        shards_of_bucket: dict[str, list[int]] = {}
        for shard, result in enumerate(counted):
            for bucket in result.buckets:
                shards_of_bucket.setdefault(bucket, []).append(shard)
        return {f"{b}-r{r:03d}": LineMergeTask(b, r, s) for b, s in sorted(shards_of_bucket.items())
                for r in range(self.config.line_dedup.hash_ranges)}

    def run(self, task: LineMergeTask) -> LineMergeResult:
        config = self.config
        bucket, part, ranges = task.bucket, task.range, config.line_dedup.hash_ranges
        hashes, counts = [], []
        for shard in task.shard_list:
            with np.load(_counts_path(config, shard)) as f:
                if f"h{bucket}" in f:
                    h, c = f[f"h{bucket}"], f[f"c{bucket}"]
                    mine = h % np.uint64(ranges) == part
                    hashes.append(h[mine])
                    counts.append(c[mine])
        h = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
        c = np.concatenate(counts) if counts else np.empty(0, np.int64)
        unique, inverse = np.unique(h, return_inverse=True)
        totals = np.bincount(inverse, weights=c, minlength=len(unique)) if len(h) else np.empty(0)
        frequent = unique[totals > config.line_dedup.max_count]
        save_npy(_frequent_path(config, bucket, part), frequent)
        return LineMergeResult(int(len(frequent)))


@dataclass
class LinesRemoved:
    text: str | None  # the document without its frequent lines; None when no non-blank line is left
    removed: int  # how many lines went


class LineRemover:
    """Drops the frequent lines of a shard's surviving documents, taken in order (buckets follow the ordinals)."""

    def __init__(self, config: CurateConfig, first: Ordinals) -> None:
        self.config, self.ordinals = config, dict(first)
        self._frequent: dict[str | None, tuple[str, np.ndarray]] = {}  # the current bucket of each language

    def apply(self, doc: Document) -> LinesRemoved:
        language = _line_language(self.config, doc)
        bucket = _next_line_bucket(self.config, self.ordinals, language)
        if self._frequent.get(language, ("",))[0] != bucket:
            self._frequent[language] = (bucket, _frequent_lines(self.config, bucket))
        frequent = self._frequent[language][1]
        lines = doc.text.split("\n")
        h = line_hashes(lines, language)
        i = np.minimum(np.searchsorted(frequent, h), max(len(frequent) - 1, 0))
        drop = (h != 0) & (frequent[i] == h) if len(frequent) else np.zeros(len(h), dtype=bool)
        if not drop.any():
            return LinesRemoved(doc.text, 0)
        kept = [line for line, d in zip(lines, drop) if not d]
        text = "\n".join(kept).strip("\n") if any(line.strip() for line in kept) else None
        return LinesRemoved(text, int(drop.sum()))

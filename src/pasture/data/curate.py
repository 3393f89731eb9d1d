"""`run_curation`: the Llama 3 web-data pipeline as resumable, sharded phases.

Phases, each a set of tasks run by the engine (local processes or Ray):

1. ingest (per input file): read, extract HTML, normalise URLs, identify the language when
   de-duplication is per language; write the documents, their URL keys and MinHash band keys.
2. url_dedup (per URL-hash range): keep the most recent crawl of each URL.
3. minhash_buckets (per band x hash range): documents sharing a band key -> pairs.
4. minhash_cluster (rounds of per-partition tasks, then per shard): connected components
   by min-label propagation over hash-partitioned edges; smallest doc key of a cluster is kept.
5. line_count (per shard) and line_merge (per bucket x hash range): lines seen more
   than `max_count` times within a bucket of `bucket_docs` documents (of one language
   when line de-duplication is per language).
6. filter (per shard): apply the removals and line dedup, then the per-document
   stages of `pasture.data.filters`; write the output and the rejects.
7. mix: `pasture.data.mix.write_mix` over the output, when `[mix]` is enabled.

A document is identified inside the run by its doc key `shard << 32 | position`
(position among the documents the shard's ingest wrote), which orders documents the
same way on every engine and makes "keep the smallest key" deterministic.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from pasture.data.engine import make_engine, run_tasks, write_json_atomic
from pasture.data.recipe import CurateConfig, filter_registry, parse_recipe
from pasture.data.stats import StageStats, merge_stats, write_report
from pasture.documents import Document, DocumentWriter, read_documents
from pasture.errors import PastureError

SHARD_BITS = 32
WORK = "_work"
DEDUP_REASONS = {"url_dedup": "url_duplicate", "minhash": "near_duplicate"}
MANAGED = ("data", "rejects", "mix", WORK, "stats.json", "stats.md", "recipe.json")


def doc_key(shard: int, position: int | np.ndarray) -> int | np.ndarray:
    return (np.int64(shard) << SHARD_BITS) | position


def shard_name(shard: int) -> str:
    return f"s{shard:05d}"


def describe_key(key: int) -> str:
    """A doc key as `shard:position`, for the rejects' `duplicate_of`."""
    return f"{shard_name(int(key) >> SHARD_BITS)}:{int(key) & ((1 << SHARD_BITS) - 1)}"


def _text_bytes(text: str) -> int:
    return len(text.encode("utf-8", "replace"))


class _Rejects:
    """Dropped documents of one shard, one file per stage, with the reason in meta."""

    def __init__(self, out_dir: Path, shard: int, enabled: bool, fmt: str) -> None:
        self.out_dir, self.shard, self.enabled, self.fmt = out_dir, shard, enabled, fmt
        self._writers: dict[str, DocumentWriter] = {}

    def write(self, stage: str, doc: Document, reason: str, **details: Any) -> None:
        if not self.enabled:
            return
        if stage not in self._writers:
            path = self.out_dir / "rejects" / stage / f"{shard_name(self.shard)}.{self.fmt}"
            self._writers[stage] = DocumentWriter(path)
        doc.meta = dict(doc.meta, reject_reason=reason, **details)
        self._writers[stage].write(doc)

    def close(self) -> None:
        for w in self._writers.values():
            w.close()

    def abort(self) -> None:
        for w in self._writers.values():
            w.abort()


def _work(config: CurateConfig) -> Path:
    return Path(config.output.dir) / WORK


# ---------------------------------------------------------------- 1. ingest


def _tags_languages(config: CurateConfig) -> bool:
    return config.minhash.per_language or config.line_dedup.per_language


def _band_keys(hasher: Any, texts: list[str], languages: list[str] | None) -> np.ndarray:
    """Band keys of a batch; in each document's language key space when MinHash is per language."""
    from pasture.data.minhash import in_language, stable_hash

    keys = hasher.band_keys(texts)
    if languages is None:
        return keys
    return in_language(keys, np.array([stable_hash(x) for x in languages], dtype=np.uint64)[:, None])


def ingest_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Read one input file; write its documents, URL keys and MinHash band keys."""
    from pasture.data.extract import Extractor, decode_html
    from pasture.data.filters.language import identify_language
    from pasture.data.minhash import MinHasher, stable_hash
    from pasture.data.sources import RawDocument, read_source
    from pasture.data.urls import document_time, normalize_url, url_key

    config: CurateConfig = task["config"]
    shard, path = task["shard"], Path(task["path"])
    work, out = _work(config), Path(config.output.dir)
    stats = StageStats()
    rejects = _Rejects(out, shard, config.output.write_rejects, config.output.format)
    extractor = Extractor(config.extract.engine, config.extract.timeout_s, config.extract.main_content,
                          config.extract.alt_texts, config.extract.strip_markdown)
    hasher = MinHasher(config.minhash.ngram, config.minhash.bands, config.minhash.rows, config.minhash.seed)
    url_hashes, url_times, url_positions, band_keys, pending_texts = [], [], [], [], []
    tag_languages = _tags_languages(config)
    language_model = config.filters.get("language", {}).get("model")  # the [language] stage's model, if it names one
    pending_languages: list[str] | None = [] if config.minhash.per_language else None
    languages: dict[str, int] = {}
    doc_languages: list[str] = []  # by position, for per-language line buckets
    writer = DocumentWriter(work / "ingest" / f"{shard_name(shard)}.jsonl.zst")
    started = time.perf_counter()
    extract_seconds = 0.0
    try:
        for item in read_source(path, config.input.format):
            if not isinstance(item, RawDocument):
                stats.dropped("read", item.reason, 0, counts_as_doc=False)
                rejects.write("read", Document(id=item.detail, text="", source=str(path)), item.reason,
                              detail=item.detail)
                continue
            doc = item.doc
            raw_bytes = len(item.html) if item.html is not None else _text_bytes(doc.text)
            if item.html is not None:
                doc.text = decode_html(item.html, doc.meta.pop("charset", None))
            else:
                doc.meta.pop("charset", None)
            if raw_bytes > config.input.max_document_bytes:
                # a multi-hundred-MB "document" is a dump, not text; keep memory bounded and say why
                stats.dropped("read", "document_too_large", raw_bytes)
                rejects.write("read", Document(id=doc.id, text="", url=doc.url, source=doc.source),
                              "document_too_large", detail=f"{raw_bytes} bytes")
                continue
            if doc.text.count("\ufffd") > config.input.max_invalid_fraction * len(doc.text):
                stats.dropped("read", "invalid_utf8" if item.html is None else "invalid_encoding", raw_bytes)
                rejects.write("read", doc, "invalid_utf8" if item.html is None else "invalid_encoding")
                continue
            stats.passed("read", raw_bytes)
            if item.html is not None and config.extract.enabled:
                t0 = time.perf_counter()
                html = doc.text
                text, reason = extractor.extract(html)
                extract_seconds += time.perf_counter() - t0
                if reason:
                    stats.dropped("extract", reason, raw_bytes)
                    rejects.write("extract", doc, reason)
                    continue
                doc.text = text
                stats.passed("extract", raw_bytes, _text_bytes(text))
            position = writer.count
            if doc.url:
                doc.url = normalize_url(doc.url)
                url_hashes.append(stable_hash(url_key(doc.url)))
                url_times.append(document_time(doc.meta))
                url_positions.append(position)
            if tag_languages:
                language, score = identify_language(doc.text, language_model)
                doc.meta["language"], doc.meta["language_score"] = language, round(score, 4)
                languages[language] = languages.get(language, 0) + 1
                doc_languages.append(language)
            writer.write(doc)
            if config.minhash.enabled:
                pending_texts.append(doc.text)
                if pending_languages is not None:
                    pending_languages.append(doc.meta["language"])
                if len(pending_texts) >= config.minhash.batch_docs:
                    band_keys.append(_band_keys(hasher, pending_texts, pending_languages))
                    pending_texts = []
                    pending_languages = [] if pending_languages is not None else None
        if pending_texts:
            band_keys.append(_band_keys(hasher, pending_texts, pending_languages))
        writer.close()
        rejects.close()
    except BaseException:
        writer.abort()
        rejects.abort()
        raise
    if config.url_dedup.enabled:
        _save_npz(work / "url" / f"{shard_name(shard)}.npz", hash=np.array(url_hashes, dtype=np.uint64),
                  time=np.array(url_times, dtype=np.int64), position=np.array(url_positions, dtype=np.int64))
    if config.minhash.enabled:
        keys = np.concatenate(band_keys) if band_keys else np.empty((0, config.minhash.bands), dtype=np.uint64)
        _save_npy(work / "minhash" / "sig" / f"{shard_name(shard)}.npy", keys)
    if _line_buckets_per_language(config):
        names, index = np.unique(np.array(doc_languages, dtype=str), return_inverse=True)
        _save_npz(_line_languages_path(config, shard), names=names, index=index.astype(np.int32))
    stats.add("extract", "seconds", extract_seconds)
    stats.add("read", "seconds", time.perf_counter() - started - extract_seconds)
    return {"docs": writer.count, "stats": stats.to_dict(), "languages": languages}


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


# ---------------------------------------------------------------- 2. URL dedup


def url_dedup_range(task: dict[str, Any]) -> dict[str, Any]:
    """Within one slice of the URL-hash space, keep the newest copy of each URL (ties: smallest doc key)."""
    config: CurateConfig = task["config"]
    ranges, part = config.url_dedup.hash_ranges, task["range"]
    hashes, times, keys = [], [], []
    for shard in range(task["shards"]):
        with np.load(_work(config) / "url" / f"{shard_name(shard)}.npz") as f:
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
    _save_npz(_work(config) / "url" / f"remove-r{part:03d}.npz", key=removed[order], kept=kept_for[order])
    return {"removed": int(len(removed))}


def _load_removals(config: CurateConfig, shard: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Removed doc keys (sorted) and the key each duplicates, per dedup stage; one shard's slice if given."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    work = _work(config)
    if config.url_dedup.enabled:
        keys, kept = [], []
        for part in range(config.url_dedup.hash_ranges):
            with np.load(work / "url" / f"remove-r{part:03d}.npz") as f:
                key, kp = f["key"], f["kept"]
            if shard is not None:
                lo, hi = np.searchsorted(key, [doc_key(shard, 0), doc_key(shard + 1, 0)])
                key, kp = key[lo:hi], kp[lo:hi]
            keys.append(key)
            kept.append(kp)
        key, kp = np.concatenate(keys), np.concatenate(kept)
        order = np.argsort(key)
        out["url_dedup"] = (key[order], kp[order])
    if config.minhash.enabled and shard is not None:
        with np.load(work / "minhash" / "remove" / f"{shard_name(shard)}.npz") as f:
            out["minhash"] = (f["key"], f["root"])
    return out


# ---------------------------------------------------------------- 3-4. MinHash


def _components(config: CurateConfig) -> Path:
    return _work(config) / "minhash" / "components"


def _labels_path(config: CurateConfig, round_: int, partition: int) -> Path:
    return _components(config) / f"round{round_:03d}" / f"labels-p{partition:03d}.npz"


def minhash_bucket(task: dict[str, Any]) -> dict[str, Any]:
    """One band, one slice of its key space: documents with equal band keys become (root, member) pairs.

    The pairs are written as directed edges in both directions, one file per node partition of
    the edge's source, so each clustering task later reads only its own partition.
    """
    from pasture.data.minhash import bucket_pairs, node_partition

    config: CurateConfig = task["config"]
    band, part, ranges = task["band"], task["range"], config.minhash.hash_ranges
    url_removed = _load_removals(config).get("url_dedup", (np.empty(0, np.int64),))[0]
    band_keys, keys = [], []
    for shard in range(task["shards"]):
        column = np.load(_work(config) / "minhash" / "sig" / f"{shard_name(shard)}.npy", mmap_mode="r")[:, band]
        k = doc_key(shard, np.arange(len(column), dtype=np.int64))
        mine = (column % np.uint64(ranges) == part) & ~np.isin(k, url_removed)
        band_keys.append(np.asarray(column[mine]))
        keys.append(k[mine])
    pairs = bucket_pairs(np.concatenate(band_keys), np.concatenate(keys))
    edges = np.concatenate([pairs, pairs[:, ::-1]])
    partition_of_source = node_partition(edges[:, 0], config.minhash.cluster_partitions)
    for p in np.unique(partition_of_source).tolist():
        _save_npy(_components(config) / "pairs" / f"p{p:03d}" / f"b{band:03d}-r{part:03d}.npy",
                  edges[partition_of_source == p])
    return {"pairs": int(len(pairs))}


def _partition_edges(config: CurateConfig, partition: int) -> np.ndarray:
    """The distinct directed edges of one partition, sorted; the same pair found by many bands is kept once."""
    edges = np.empty((0, 2), dtype=np.int64)
    for path in sorted((_components(config) / "pairs" / f"p{partition:03d}").glob("b*-r*.npy")):
        edges = np.unique(np.concatenate([edges, np.load(path)]), axis=0)
    return edges


def minhash_label_round(task: dict[str, Any]) -> dict[str, Any]:
    """One round of min-label propagation in one partition of the duplicate graph.

    Round 0 labels every node with itself; each later round lowers labels to the smallest one
    the neighbours sent in the round before. Nodes whose label changed send it along their
    edges, into one inbox per target partition. Memory: this partition's edges, labels and inbox.
    """
    from pasture.data.minhash import lower_labels, min_label_messages, node_partition

    config: CurateConfig = task["config"]
    partition, round_ = task["partition"], task["round"]
    partitions, components = config.minhash.cluster_partitions, _components(config)
    edges_path = components / "edges" / f"p{partition:03d}.npy"
    if round_ == 0:
        edges = _partition_edges(config, partition)
        _save_npy(edges_path, edges)
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
    _save_npz(_labels_path(config, round_, partition), node=nodes, label=labels)
    targets, sent = min_label_messages(edges, nodes, labels, changed)
    target_partition = node_partition(targets, partitions)
    for q in np.unique(target_partition).tolist():
        mine = target_partition == q
        _save_npy(components / f"round{round_:03d}" / f"to-p{q:03d}" / f"from-p{partition:03d}.npy",
                  np.stack([targets[mine], sent[mine]], axis=1))
    return {"changed": int(changed.sum())}


def minhash_removals(task: dict[str, Any]) -> dict[str, Any]:
    """One shard's removed doc keys and their cluster root, from the converged labels of every partition."""
    config: CurateConfig = task["config"]
    shard = task["shard"]
    keys, roots, clusters = [], [], 0
    for partition in range(config.minhash.cluster_partitions):
        with np.load(_labels_path(config, task["round"], partition)) as f:
            nodes, labels = f["node"], f["label"]
        mine = (nodes >> SHARD_BITS) == shard
        removed = mine & (nodes != labels)
        keys.append(nodes[removed])
        roots.append(labels[removed])
        clusters += int((mine & ~removed).sum())
    key, root = np.concatenate(keys), np.concatenate(roots)
    order = np.argsort(key)
    _save_npz(_work(config) / "minhash" / "remove" / f"{shard_name(shard)}.npz", key=key[order], root=root[order])
    return {"removed": int(len(key)), "clusters": clusters}


def _cluster_duplicates(engine: Any, config: CurateConfig, shards: int) -> dict[str, int]:
    """Connected components of the duplicate graph in rounds of partition tasks, until no label changes.

    A round's files are deleted once the next round is done (nothing reads them again, even
    on resume); the round count is the longest distance from a cluster's root, plus two.
    """
    components, done = _components(config), _work(config) / "done" / "minhash_cluster"
    round_, changed = 0, 1
    while changed:
        results = run_tasks(engine, minhash_label_round,
                            {f"p{p:03d}": {"config": config, "partition": p, "round": round_}
                             for p in range(config.minhash.cluster_partitions)},
                            done / f"round{round_:03d}", f"minhash_cluster round {round_}")
        changed = sum(r["changed"] for r in results.values())
        shutil.rmtree(components / ("pairs" if round_ == 0 else f"round{round_ - 1:03d}"), ignore_errors=True)
        round_ += 1
    removals = run_tasks(engine, minhash_removals,
                         {shard_name(i): {"config": config, "shard": i, "round": round_ - 1} for i in range(shards)},
                         done / "removals", "minhash_removals")
    return {"rounds": round_, "clusters": sum(r["clusters"] for r in removals.values())}


# ---------------------------------------------------------------- 5. line dedup


def line_hashes(lines: list[str], language: str | None = None) -> np.ndarray:
    """Stable hashes of stripped lines; 0 for blank lines, which are never counted or removed.

    With a `language`, the hashes are that language's own: the same line in two languages
    is counted (and removed) separately.
    """
    from pasture.data.minhash import in_language, stable_hash

    hashes = np.fromiter((stable_hash(s) if (s := line.strip()) else 0 for line in lines), dtype=np.uint64,
                         count=len(lines))
    return hashes if language is None else in_language(hashes, stable_hash(language))


def _line_language(config: CurateConfig, doc: Document) -> str | None:
    """The language a document's lines are hashed and bucketed in: the one identified at ingest
    (the [language] stage may retag later), or None when line de-duplication ignores language."""
    return doc.meta["language"] if config.line_dedup.per_language else None


def _line_buckets_per_language(config: CurateConfig) -> bool:
    return config.line_dedup.enabled and config.line_dedup.per_language


def _line_languages_path(config: CurateConfig, shard: int) -> Path:
    return _work(config) / "lines" / "languages" / f"{shard_name(shard)}.npz"


def _surviving_counts(config: CurateConfig, shard: int, docs: int) -> dict[str | None, int]:
    """Documents of one shard that survive URL and MinHash de-duplication, per line-bucket language.

    The key is None when buckets count every language together, else the language identified at ingest.
    """
    removed = [key for key, _ in _load_removals(config, shard).values()]
    if not _line_buckets_per_language(config):
        return {None: docs - sum(len(key) for key in removed)}
    path = _line_languages_path(config, shard)
    if not path.exists():
        raise PastureError(f"{path} is missing: this run's ingest predates per-language line buckets; "
                           f"delete {_work(config)} and run again")
    with np.load(path) as f:
        names, index = f["names"], f["index"]
    alive = np.ones(len(index), dtype=bool)
    for key in removed:
        alive[key & ((1 << SHARD_BITS) - 1)] = False
    counts = np.bincount(index[alive], minlength=len(names))
    return {str(name): int(count) for name, count in zip(names, counts)}


def _first_ordinals(counts: list[dict[str | None, int]]) -> list[dict[str | None, int]]:
    """Per shard, the ordinal of its first surviving document in each bucket language, counting shards in order."""
    running = {language: 0 for shard_counts in counts for language in shard_counts}
    firsts = []
    for shard_counts in counts:
        firsts.append(dict(running))
        for language, count in shard_counts.items():
            running[language] += count
    return firsts


def _next_line_bucket(config: CurateConfig, ordinals: dict[str | None, int], language: str | None) -> str:
    """The bucket name of the next surviving document of `language` (None: of any), counting it in `ordinals`.

    Llama 3 counts lines within buckets of `bucket_docs` documents; per language, those are documents of
    that language only, so a small language's lines are not spread over buckets sized by the big ones.
    """
    ordinal = ordinals[language]
    ordinals[language] = ordinal + 1
    bucket = f"b{ordinal // config.line_dedup.bucket_docs:05d}"
    return bucket if language is None else f"{quote(language, safe='')}-{bucket}"


def _surviving_docs(config: CurateConfig, shard: int,
                    removals: dict[str, tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[int, Document, str | None, int]]:
    """(position, doc, removing stage or None, duplicate-of key) for each ingested doc of a shard."""
    for position, doc in enumerate(read_documents(_work(config) / "ingest" / f"{shard_name(shard)}.jsonl.zst")):
        key = doc_key(shard, position)
        for stage, (removed, other) in removals.items():
            i = np.searchsorted(removed, key)
            if i < len(removed) and removed[i] == key:
                yield position, doc, stage, int(other[i])
                break
        else:
            yield position, doc, None, -1


def line_count_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Count line hashes per bucket over the documents of one shard that survive de-duplication."""
    config: CurateConfig = task["config"]
    shard, ordinals = task["shard"], dict(task["first_ordinals"])
    started = time.perf_counter()
    per_bucket: dict[str, list[np.ndarray]] = {}
    for _, doc, removed_by, _ in _surviving_docs(config, shard, _load_removals(config, shard)):
        if removed_by:
            continue
        language = _line_language(config, doc)
        h = line_hashes(doc.text.split("\n"), language)
        per_bucket.setdefault(_next_line_bucket(config, ordinals, language), []).append(h[h != 0])
    arrays = {}
    for bucket, parts in per_bucket.items():
        hashes, counts = np.unique(np.concatenate(parts), return_counts=True)
        arrays[f"h{bucket}"], arrays[f"c{bucket}"] = hashes, counts.astype(np.int64)
    _save_npz(_work(config) / "lines" / "counts" / f"{shard_name(shard)}.npz", **arrays)
    return {"buckets": sorted(per_bucket), "seconds": time.perf_counter() - started}


def line_merge(task: dict[str, Any]) -> dict[str, Any]:
    """Total counts for one bucket and hash slice; write the lines seen more than max_count times."""
    config: CurateConfig = task["config"]
    bucket, part, ranges = task["bucket"], task["range"], config.line_dedup.hash_ranges
    hashes, counts = [], []
    for shard in task["shard_list"]:
        with np.load(_work(config) / "lines" / "counts" / f"{shard_name(shard)}.npz") as f:
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
    _save_npy(_frequent_path(config, bucket, part), frequent)
    return {"frequent_lines": int(len(frequent))}


def _frequent_path(config: CurateConfig, bucket: str, part: int) -> Path:
    return _work(config) / "lines" / "frequent" / f"{bucket}-r{part:03d}.npy"


def _frequent_lines(config: CurateConfig, bucket: str) -> np.ndarray:
    """The sorted hashes of the lines to remove in one bucket, over all its hash ranges."""
    parts = [np.load(_frequent_path(config, bucket, part)) for part in range(config.line_dedup.hash_ranges)]
    return np.sort(np.concatenate(parts))


# ---------------------------------------------------------------- 6. filter and write


def build_stages(filters: dict[str, dict[str, Any]], registry: dict[str, type] | None = None) -> list[Any]:
    """Instantiate the enabled per-document stages from their recipe sections, in recipe order."""
    if not filters:
        return []
    registry = registry if registry is not None else filter_registry() or {}
    stages = []
    for name, kwargs in filters.items():
        try:
            stages.append(registry[name](**kwargs))
        except TypeError as e:
            raise PastureError(f"[{name}]: {e}") from None
    return stages


def filter_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Apply the de-duplication decisions and the per-document stages to one shard; write output and rejects."""
    config: CurateConfig = task["config"]
    shard, ordinals = task["shard"], dict(task["first_ordinals"])
    stages = task["stages"]
    out = Path(config.output.dir)
    stats = StageStats()
    rejects = _Rejects(out, shard, config.output.write_rejects, config.output.format)
    writers: list[DocumentWriter] = []
    frequent_by_language: dict[str | None, tuple[str, np.ndarray]] = {}  # the current bucket of each language
    stage_seconds: dict[str, float] = {}
    dedup_stages = [name for name in DEDUP_REASONS if getattr(config, name).enabled]
    kept_languages: dict[str, int] = {}
    try:
        for _, doc, removed_by, other in _surviving_docs(config, shard, _load_removals(config, shard)):
            size = _text_bytes(doc.text)
            language = doc.meta.get("language")  # as identified at ingest; the [language] stage may retag
            for stage in dedup_stages:
                if stage == removed_by:
                    stats.dropped(stage, DEDUP_REASONS[stage], size)
                    rejects.write(stage, doc, DEDUP_REASONS[stage], duplicate_of=describe_key(other))
                    break
                stats.passed(stage, size)
            if removed_by:
                continue
            if config.line_dedup.enabled:
                t0 = time.perf_counter()
                line_language = _line_language(config, doc)
                bucket = _next_line_bucket(config, ordinals, line_language)
                if frequent_by_language.get(line_language, ("",))[0] != bucket:
                    frequent_by_language[line_language] = (bucket, _frequent_lines(config, bucket))
                frequent = frequent_by_language[line_language][1]
                lines = doc.text.split("\n")
                h = line_hashes(lines, line_language)
                i = np.minimum(np.searchsorted(frequent, h), max(len(frequent) - 1, 0))
                drop = (h != 0) & (frequent[i] == h) if len(frequent) else np.zeros(len(h), dtype=bool)
                if drop.any():
                    stats.add("line_dedup", "lines_removed", int(drop.sum()))
                    kept_lines = [line for line, d in zip(lines, drop) if not d]
                    if not any(line.strip() for line in kept_lines):
                        stats.dropped("line_dedup", "all_lines_duplicate", size)
                        rejects.write("line_dedup", doc, "all_lines_duplicate")
                        continue
                    doc.text = "\n".join(kept_lines).strip("\n")
                stats.passed("line_dedup", size, _text_bytes(doc.text))
                size = _text_bytes(doc.text)
                stage_seconds["line_dedup"] = stage_seconds.get("line_dedup", 0.0) + time.perf_counter() - t0
            dropped = False
            for stage in stages:
                t0 = time.perf_counter()
                reason = stage.process(doc)
                stage_seconds[stage.name] = stage_seconds.get(stage.name, 0.0) + time.perf_counter() - t0
                if reason is not None:
                    stats.dropped(stage.name, reason, size)
                    rejects.write(stage.name, doc, reason)
                    dropped = True
                    break
                new_size = _text_bytes(doc.text)
                stats.passed(stage.name, size, new_size)
                size = new_size
            if dropped:
                continue
            if not writers or writers[-1].count >= config.output.shard_size:
                path = out / "data" / f"{shard_name(shard)}-{len(writers):05d}.{config.output.format}"
                writers.append(DocumentWriter(path))
            writers[-1].write(doc)
            stats.passed("output", size)
            if _tags_languages(config):
                kept_languages[language] = kept_languages.get(language, 0) + 1
        for w in writers:
            w.close()
        rejects.close()
    except BaseException:
        for w in writers:
            w.abort()
        rejects.abort()
        raise
    for name, seconds in stage_seconds.items():
        stats.add(name, "seconds", seconds)
    return {"stats": stats.to_dict(), "files": [str(w.path) for w in writers], "languages": kept_languages}


# ---------------------------------------------------------------- driver


def _fit_stages(config: CurateConfig, stages: list[Any], shards: int) -> None:
    """Give stages that need corpus statistics (`fit`) a sample of de-duplicated documents."""
    fitting = [s for s in stages if hasattr(s, "fit")]
    if not fitting:
        return
    sample: list[Document] = []
    for shard in range(shards):
        for _, doc, removed_by, _ in _surviving_docs(config, shard, _load_removals(config, shard)):
            if not removed_by:
                sample.append(doc)
            if len(sample) >= config.engine.fit_sample_docs:
                break
        if len(sample) >= config.engine.fit_sample_docs:
            break
    for stage in fitting:
        stage.fit(sample)


def _prepare_output(config: CurateConfig, resolved: dict[str, Any]) -> None:
    out = Path(config.output.dir)
    fingerprint = {k: v for k, v in resolved.items() if k != "engine"}
    recorded = out / "recipe.json"
    if recorded.exists():
        previous = json.loads(recorded.read_text())
        if previous != fingerprint:
            if not config.output.overwrite:
                raise PastureError(f"{out} holds a run of a different recipe; use a new output.dir, "
                                   "or output.overwrite=true to start afresh")
            for name in MANAGED:
                path = out / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
    elif out.exists() and any((out / name).exists() for name in ("data", WORK)):
        raise PastureError(f"{out} holds output that is not from pasture curate; choose an empty output.dir")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(recorded, fingerprint)


def _resolved(config: CurateConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _language_counts(ingested: list[dict[str, int]], kept: list[dict[str, int]]) -> dict[str, dict[str, int]]:
    """Documents per language as identified at ingest, and how many of them were kept; most frequent first."""
    totals: dict[str, dict[str, int]] = {}
    for column, parts in (("docs", ingested), ("kept", kept)):
        for part in parts:
            for language, count in part.items():
                totals.setdefault(language, {"docs": 0, "kept": 0})[column] += count
    return dict(sorted(totals.items(), key=lambda kv: (-kv[1]["docs"], kv[0])))


def run_curation(recipe: dict[str, Any] | CurateConfig, registry: dict[str, type] | None = None) -> dict[str, Any]:
    """Run the whole pipeline of a recipe (a dict as loaded from TOML, or a built config); returns the stats.

    `registry` maps filter section names to stage classes; by default `pasture.data.filters.STAGES`.
    """
    from pasture.data.sources import input_files

    config = recipe if isinstance(recipe, CurateConfig) else parse_recipe(recipe, registry)
    resolved = _resolved(config)
    _prepare_output(config, resolved)
    out, work = Path(config.output.dir), _work(config)
    files = input_files(config.input.paths, config.input.format)
    stages = build_stages(config.filters, registry)
    n = len(files)
    phases: dict[str, float] = {}
    engine = make_engine(config.engine.kind, config.engine.workers, config.engine.ray_address,
                         config.engine.progress)
    wall = time.perf_counter()

    def phase(name: str, fn, tasks: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        results = run_tasks(engine, fn, tasks, work / "done" / name, name)
        phases[name] = time.perf_counter() - t0
        return results

    try:
        ingested = phase("ingest", ingest_shard, {shard_name(i): {"config": config, "shard": i, "path": str(p)}
                                                  for i, p in enumerate(files)})
        docs_per_shard = [ingested[shard_name(i)]["docs"] for i in range(n)]
        global_counts: dict[str, dict[str, float]] = {}
        if config.url_dedup.enabled:
            results = phase("url_dedup", url_dedup_range, {f"r{r:03d}": {"config": config, "range": r, "shards": n}
                                                           for r in range(config.url_dedup.hash_ranges)})
            global_counts["url_dedup"] = {"seconds": phases["url_dedup"]}
        if config.minhash.enabled:
            results = phase("minhash_buckets", minhash_bucket,
                            {f"b{b:03d}-r{r:03d}": {"config": config, "band": b, "range": r, "shards": n}
                             for b in range(config.minhash.bands) for r in range(config.minhash.hash_ranges)})
            pairs = sum(r["pairs"] for r in results.values())
            t0 = time.perf_counter()
            cluster = _cluster_duplicates(engine, config, n)
            phases["minhash_cluster"] = time.perf_counter() - t0
            global_counts["minhash"] = {"seconds": phases["minhash_buckets"] + phases["minhash_cluster"],
                                        "candidate_pairs": pairs, "clusters": cluster["clusters"],
                                        "cluster_rounds": cluster["rounds"]}
        first_ordinals = _first_ordinals([_surviving_counts(config, i, docs_per_shard[i]) for i in range(n)])
        if config.line_dedup.enabled:
            counted = phase("line_count", line_count_shard,
                            {shard_name(i): {"config": config, "shard": i, "first_ordinals": first_ordinals[i]}
                             for i in range(n)})
            shards_of_bucket: dict[str, list[int]] = {}
            for i in range(n):
                for bucket in counted[shard_name(i)]["buckets"]:
                    shards_of_bucket.setdefault(bucket, []).append(i)
            merged = phase("line_merge", line_merge,
                           {f"{b}-r{r:03d}": {"config": config, "bucket": b, "range": r, "shard_list": s}
                            for b, s in sorted(shards_of_bucket.items())
                            for r in range(config.line_dedup.hash_ranges)})
            global_counts["line_dedup"] = {
                "seconds": phases["line_count"] + phases["line_merge"],
                "frequent_lines": sum(m["frequent_lines"] for m in merged.values()),
                "buckets": len(shards_of_bucket)}
        t0 = time.perf_counter()
        _fit_stages(config, stages, n)
        phases["fit"] = time.perf_counter() - t0
        filtered = phase("filter", filter_shard,
                         {shard_name(i): {"config": config, "shard": i, "first_ordinals": first_ordinals[i],
                                          "stages": stages} for i in range(n)})
    finally:
        engine.close()
    stage_stats = merge_stats([ingested[k]["stats"] for k in ingested] + [filtered[k]["stats"] for k in filtered])
    for name, counts in global_counts.items():
        for key, value in counts.items():
            stage_stats.setdefault(name, {"docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0,
                                          "removed": {}, "seconds": 0.0})
            stage_stats[name][key] = stage_stats[name].get(key, 0) + value
    output_files = [f for k in sorted(filtered) for f in filtered[k]["files"]]
    extra: dict[str, Any] = {"input_files": n, "output_files": len(output_files), "engine": config.engine.kind,
                             "workers": getattr(engine, "workers", config.engine.workers)}
    if _tags_languages(config):
        extra["languages"] = _language_counts([ingested[k]["languages"] for k in ingested],
                                              [filtered[k]["languages"] for k in filtered])
    if config.mix is not None:
        t0 = time.perf_counter()
        try:
            from pasture.data.mix import write_mix
        except ModuleNotFoundError as e:
            if e.name != "pasture.data.mix":
                raise
            raise PastureError("[mix] is enabled but pasture.data.mix is not available") from None
        extra["mix"] = write_mix(output_files, out / "mix", **config.mix)
        phases["mix"] = time.perf_counter() - t0
    phases["total"] = time.perf_counter() - wall
    extra["recipe"] = resolved
    return write_report(out, stage_stats, phases, json.loads(json.dumps(extra, default=str)))

"""What the curation phases share: doc keys, the work-folder layout, array files and reject writers.

A document is identified inside the run by its doc key `shard << 32 | position`
(position among the documents the shard's ingest wrote), which orders documents the
same way on every engine and makes "keep the smallest key" deterministic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pasture.documents import Document, DocumentWriter
from pasture.data.recipe import CurateConfig

SHARD_BITS = 32
WORK = "_work"


def doc_key(shard: int, position: int | np.ndarray) -> int | np.ndarray:
    return (np.int64(shard) << SHARD_BITS) | position


def shard_name(shard: int) -> str:
    return f"s{shard:05d}"


def describe_key(key: int) -> str:
    """A doc key as `shard:position`, for the rejects' `duplicate_of`."""
    return f"{shard_name(int(key) >> SHARD_BITS)}:{int(key) & ((1 << SHARD_BITS) - 1)}"


def text_bytes(text: str) -> int:
    return len(text.encode("utf-8", "replace"))


def work_dir(config: CurateConfig) -> Path:
    """The run's scratch folder: ingested documents, hashes, pair and label files, done-markers."""
    return Path(config.output.dir) / WORK


def ingested_path(config: CurateConfig, shard: int) -> Path:
    return work_dir(config) / "ingest" / f"{shard_name(shard)}.jsonl.zst"


def tags_languages(config: CurateConfig) -> bool:
    """Whether ingest identifies each document's language (de-duplication per language needs it)."""
    return config.minhash.per_language or config.line_dedup.per_language


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


class Rejects:
    """Dropped documents of one shard, one file per stage, with the reason in meta."""

    def __init__(self, config: CurateConfig, shard: int) -> None:
        self.out_dir, self.shard = Path(config.output.dir), shard
        self.enabled, self.fmt = config.output.write_rejects, config.output.format
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

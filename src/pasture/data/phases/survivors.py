"""The ingested documents of a shard with the de-duplication decisions (URL, MinHash) applied to them.

Read by line counting, by the sample given to fitted stages, and by the filter phase.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pasture.documents import Document, read_documents
from pasture.data.phases.near_dedup import minhash_removals
from pasture.data.phases.shards import doc_key, ingested_path
from pasture.data.phases.url_dedup import url_removals
from pasture.data.recipe import CurateConfig

# the de-duplication stages in the order they decide, and the reject reason each writes
DEDUP_REASONS = {"url_dedup": "url_duplicate", "minhash": "near_duplicate"}


@dataclass
class IngestedDoc:
    doc: Document
    removed_by: str | None  # the de-duplication stage that removes it, or None
    duplicate_of: int  # the doc key it duplicates when removed, else -1


def shard_removals(config: CurateConfig, shard: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per enabled de-duplication stage, the shard's removed doc keys (sorted) and the key each duplicates."""
    out = {}
    if config.url_dedup.enabled:
        out["url_dedup"] = url_removals(config, shard)
    if config.minhash.enabled:
        out["minhash"] = minhash_removals(config, shard)
    return out


def ingested_docs(config: CurateConfig, shard: int) -> Iterator[IngestedDoc]:
    """Every ingested document of a shard, in position order, with the stage that removes it (if any)."""
    removals = shard_removals(config, shard)
    for position, doc in enumerate(read_documents(ingested_path(config, shard))):
        key = doc_key(shard, position)
        for stage, (removed, other) in removals.items():
            i = np.searchsorted(removed, key)
            if i < len(removed) and removed[i] == key:
                yield IngestedDoc(doc, stage, int(other[i]))
                break
        else:
            yield IngestedDoc(doc, None, -1)


def surviving_docs(config: CurateConfig, shard: int) -> Iterator[Document]:
    """The documents of a shard that no de-duplication stage removes."""
    return (item.doc for item in ingested_docs(config, shard) if item.removed_by is None)

"""MinHash LSH near-duplicate detection, vectorised with numpy.

Documents become word n-gram shingles (lowercased, digits folded to 0, punctuation
dropped, as in datatrove's `simplify_text`; Chinese, Japanese, Thai and other scripts without
spaces cut into dictionary words by `pasture.data.segment`). Each shingle gets a stable 64-bit hash;
`bands * rows` hash functions `a*x + b (mod 2^64)` with odd `a` are applied to whole
blocks of shingles at once and reduced with a per-document minimum, so the Python
cost is one loop over documents, not over shingles x permutations. Each band of
`rows` minima is folded into one 64-bit band key: two documents share a bucket in a
band when all `rows` minima agree, which happens with probability J^rows.

Clustering is over duplicate pairs only (a document with no near-duplicate never
enters it): band buckets give star edges to the smallest document key in the bucket,
and every document gets the smallest key of its connected component as root. The
root is kept, every other member is removed: deterministic, whatever the order in
which the pair files were written. At scale the components come from min-label
propagation over edges partitioned by a hash of the node (`node_partition`,
`min_label_messages`, `lower_labels`: one round per graph diameter step, each
partition a separate task); `connected_roots` is the same answer in one process.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable

import numpy as np

from pasture.data import segment

MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_SHINGLE_PRIME = np.uint64(0x100000001B3)
ROWS_PER_BLOCK = 2048  # shingles hashed at once: 2048 x 112 uint64 = 1.8 MB, stays in cache


def _word_table() -> dict[int, str]:
    """str.translate table: punctuation, symbols, spaces and controls -> space, digits -> 0 (3x faster than a regex).

    The whole Basic Multilingual Plane, so full-width CJK punctuation (U+FF0C and the like) separates words too."""
    table = {}
    for cp in range(0x10000):
        category = unicodedata.category(chr(cp))
        if category == "Nd":
            table[cp] = "0"
        elif category[0] in "PSZC" and category != "Pc":
            table[cp] = " "
    return table


_WORD_TABLE = _word_table()


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process and every run (unlike `hash()`)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "little")


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over all output bits."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def in_language(keys: np.ndarray, language: np.ndarray | int) -> np.ndarray:
    """Hash keys moved into their language's own key space (`language`: `stable_hash` of its code,
    broadcast against `keys`), so equal keys of two languages no longer meet; 0 ("nothing") stays 0."""
    moved = mix64(keys ^ np.asarray(language, dtype=np.uint64))
    moved[moved == 0] = 1
    return np.where(keys == 0, np.uint64(0), moved)


def _normalised_split(text: str) -> list[str]:
    return text.translate(_WORD_TABLE).split()


def words(text: str) -> list[str]:
    """The normalised words shingles are made of; scripts without spaces are cut into words by `segment`."""
    return segment.words(text.lower(), spaced=_normalised_split)


def shingles(text: str, ngram: int) -> set[tuple[str, ...]]:
    """The exact shingle set (for measuring true Jaccard similarity against the estimate)."""
    w = words(text)
    if len(w) < ngram:
        return {tuple(w)} if w else set()
    return {tuple(w[i : i + ngram]) for i in range(len(w) - ngram + 1)}


class MinHasher:
    """Band keys for documents: `band_keys(texts)` -> uint64 array (n_docs, bands); 0 marks a document with no words."""

    def __init__(self, ngram: int = 5, bands: int = 14, rows: int = 8, seed: int = 1) -> None:
        self.ngram = ngram
        self.bands = bands
        self.rows = rows
        rng = np.random.default_rng(seed)
        n = bands * rows
        self._a = rng.integers(1, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._b = rng.integers(0, 2**63, size=n, dtype=np.uint64)
        self._word_cache: dict[str, int] = {}

    def _word_hash(self, word: str) -> int:
        h = self._word_cache.get(word)
        if h is None:
            if len(self._word_cache) > 2_000_000:
                self._word_cache.clear()
            h = self._word_cache[word] = stable_hash(word)
        return h

    def shingle_hashes(self, text: str) -> np.ndarray:
        w = words(text)
        if not w:
            return np.empty(0, dtype=np.uint64)
        wh = np.fromiter((self._word_hash(x) for x in w), dtype=np.uint64, count=len(w))
        m = max(len(w) - self.ngram + 1, 1)
        span = min(self.ngram, len(w))
        with np.errstate(over="ignore"):
            h = wh[:m].copy()
            for k in range(1, span):
                h = h * _SHINGLE_PRIME + wh[k : k + m]
        return mix64(h)

    def _permuted(self, h: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            out = np.multiply.outer(h, self._a)
            out += self._b
            return out

    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        """The (n_docs, bands*rows) MinHash signatures; all-ones rows for documents without words."""
        hashes = [self.shingle_hashes(t) for t in texts]
        sig = np.full((len(hashes), self.bands * self.rows), MASK64, dtype=np.uint64)
        group: list[int] = []
        group_rows = 0

        def flush() -> None:
            nonlocal group, group_rows
            if group:
                block = np.concatenate([hashes[i] for i in group])
                starts = np.cumsum([0] + [len(hashes[i]) for i in group[:-1]])
                sig[group] = np.minimum.reduceat(self._permuted(block), starts, axis=0)
            group, group_rows = [], 0

        for i, h in enumerate(hashes):
            if len(h) == 0:
                continue
            if len(h) > ROWS_PER_BLOCK:
                for start in range(0, len(h), ROWS_PER_BLOCK):
                    sig[i] = np.minimum(sig[i], self._permuted(h[start : start + ROWS_PER_BLOCK]).min(axis=0))
                continue
            group.append(i)
            group_rows += len(h)
            if group_rows >= ROWS_PER_BLOCK:
                flush()
        flush()
        return sig

    def band_keys(self, texts: Iterable[str]) -> np.ndarray:
        sig = self.signatures(texts)
        per_band = sig.reshape(len(sig), self.bands, self.rows)
        keys = np.zeros((len(sig), self.bands), dtype=np.uint64)
        for r in range(self.rows):
            keys = mix64(keys ^ per_band[:, :, r])
        keys[keys == 0] = 1  # 0 is reserved for "no words"; a real key of 0 is a 2^-64 event
        keys[(sig == MASK64).all(axis=1)] = 0
        return keys


def bucket_pairs(band_keys: np.ndarray, doc_keys: np.ndarray) -> np.ndarray:
    """Duplicate pairs (root, member) from one band: each member joins the smallest doc key of its bucket."""
    keep = band_keys != 0
    band_keys, doc_keys = band_keys[keep], doc_keys[keep]
    if len(band_keys) < 2:
        return np.empty((0, 2), dtype=np.int64)
    order = np.lexsort((doc_keys, band_keys))
    k, d = band_keys[order], doc_keys[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    root = np.repeat(d[starts], np.diff(np.r_[starts, len(k)]))
    member = root != d
    return np.stack([root[member], d[member]], axis=1).astype(np.int64)


def connected_roots(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, roots): every doc key in `pairs` and the smallest doc key of its connected component.

    Union-find done with whole-array operations: hook each edge's larger root under the
    smaller one, then compress paths by pointer jumping, until every edge lies inside one
    component. Memory is O(documents that have a duplicate), never O(corpus).
    """
    if len(pairs) == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    nodes = np.unique(pairs)
    u = np.searchsorted(nodes, pairs[:, 0])
    v = np.searchsorted(nodes, pairs[:, 1])
    parent = np.arange(len(nodes))
    while True:
        pu, pv = parent[u], parent[v]
        if np.array_equal(pu, pv):
            break
        low = np.minimum(pu, pv)
        np.minimum.at(parent, pu, low)
        np.minimum.at(parent, pv, low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return nodes, nodes[parent]


def node_partition(keys: np.ndarray, partitions: int) -> np.ndarray:
    """The connected-components partition of each doc key: hashed, so every shard spreads over all partitions."""
    return (mix64(np.asarray(keys).astype(np.uint64)) % np.uint64(partitions)).astype(np.int64)


def smallest_per_key(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique keys, the smallest value given for each)."""
    order = np.lexsort((values, keys))
    keys, values = keys[order], values[order]
    first = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.empty(0, dtype=bool)
    return keys[first], values[first]


def min_label_messages(edges: np.ndarray, nodes: np.ndarray, labels: np.ndarray,
                       changed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(targets, labels) sent along the out-edges of the nodes whose label changed; the smallest per target.

    `edges` are directed (source, target) pairs whose sources are exactly `nodes` (sorted); a node
    whose label did not change has nothing new to tell its neighbours, so it stays silent.
    """
    source = np.searchsorted(nodes, edges[:, 0])
    send = changed[source]
    return smallest_per_key(edges[send, 1], labels[source[send]])


def lower_labels(nodes: np.ndarray, labels: np.ndarray, targets: np.ndarray, offered: np.ndarray) -> np.ndarray:
    """Each node's label lowered to the smallest label its neighbours offered (`targets` all in `nodes`)."""
    targets, offered = smallest_per_key(targets, offered)
    index = np.searchsorted(nodes, targets)
    lowered = labels.copy()
    lowered[index] = np.minimum(labels[index], offered)
    return lowered

"""Shared pieces of the per-document stages: errors, resource files, and the
per-document text features every stage reads (tokenised once per document)."""

from __future__ import annotations

import re
import weakref
from collections import OrderedDict
from functools import cached_property
from pathlib import Path

import numpy as np

from pasture.data import segment
from pasture.documents import Document
from pasture.errors import PastureError

RESOURCES = Path(__file__).resolve().parent.parent / "resources"

PARAGRAPH_SPLIT_RE = re.compile(r"\n[ \t\r\f\v]*\n\s*")


class FilterError(PastureError):
    """A filter stage got a bad setting or a missing model/resource file."""


def read_word_list(path: str | Path) -> list[str]:
    """Non-empty, non-comment (`#`) lines of a text resource, lowercased."""
    p = Path(path)
    if not p.is_file():
        raise FilterError(f"word/domain list {p} does not exist")
    words = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip().lower()
        if line and not line.startswith("#"):
            words.append(line)
    return words


class TextFeatures:
    """Words, lines and paragraphs of one document text, computed lazily and once.

    `TextFeatures.of(doc)` returns the same object for the same document (while its
    text is unchanged), so every stage in a process shares one tokenisation.
    """

    _cache: "OrderedDict[int, tuple[weakref.ref, str, TextFeatures]]" = OrderedDict()
    _cache_size = 256

    def __init__(self, text: str) -> None:
        self.text = text

    @classmethod
    def of(cls, doc: Document) -> "TextFeatures":
        key = id(doc)
        hit = cls._cache.get(key)
        if hit is not None and hit[0]() is doc and hit[1] is doc.text:
            cls._cache.move_to_end(key)
            return hit[2]
        features = cls(doc.text)
        cls._cache[key] = (weakref.ref(doc), doc.text, features)
        if len(cls._cache) > cls._cache_size:
            cls._cache.popitem(last=False)
        return features

    @cached_property
    def words(self) -> list[str]:
        """Words in every script (`pasture.data.segment`): ICU's dictionary words where there are no spaces."""
        return segment.words(self.text)

    @cached_property
    def lower_words(self) -> list[str]:
        return list(map(str.lower, self.words))

    @cached_property
    def lines(self) -> list[str]:
        """Non-empty lines, stripped."""
        return [s for s in (line.strip() for line in self.text.split("\n")) if s]

    @cached_property
    def paragraphs(self) -> list[str]:
        return [p for p in (p.strip() for p in PARAGRAPH_SPLIT_RE.split(self.text)) if p]

    @cached_property
    def word_ids(self) -> np.ndarray:
        """Each word as a small integer (equal words, equal ids), for n-gram arithmetic."""
        index = {w: i for i, w in enumerate(dict.fromkeys(self.words))}
        return np.fromiter(map(index.__getitem__, self.words), np.int64, len(self.words))

    @cached_property
    def word_lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.words), np.int64, len(self.words))

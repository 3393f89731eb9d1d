"""Phase 1, ingest (one task per input file): read, extract HTML, normalise URLs, identify the
language when de-duplication is per language; write the documents, their URL keys and MinHash band keys."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pasture.documents import Document, DocumentWriter
from pasture.data.extract import Extractor, decode_html
from pasture.data.filters.language import identify_language
from pasture.data.minhash import MinHasher, in_language, stable_hash
from pasture.data.phases.shards import (Rejects, ingested_path, save_npy, save_npz, shard_name, tags_languages,
                                        text_bytes, work_dir)
from pasture.data.recipe import CurateConfig
from pasture.data.sources import RawDocument, read_source
from pasture.data.stats import StageStats
from pasture.data.urls import document_time, normalize_url, url_key


@dataclass
class IngestTask:
    shard: int
    path: str


@dataclass
class IngestResult:
    docs: int  # documents written, in position order
    stats: dict[str, dict[str, Any]]  # StageStats of read and extract
    languages: dict[str, int] = field(default_factory=dict)  # documents per language, when identified


def url_hashes_path(config: CurateConfig, shard: int) -> Path:
    return work_dir(config) / "url" / f"{shard_name(shard)}.npz"


def band_keys_path(config: CurateConfig, shard: int) -> Path:
    return work_dir(config) / "minhash" / "sig" / f"{shard_name(shard)}.npy"


def line_languages_path(config: CurateConfig, shard: int) -> Path:
    return work_dir(config) / "lines" / "languages" / f"{shard_name(shard)}.npz"


def line_buckets_per_language(config: CurateConfig) -> bool:
    return config.line_dedup.enabled and config.line_dedup.per_language


class Ingest:
    """Input file -> ingested documents plus the keys the de-duplication phases read."""

    result_type = IngestResult

    def __init__(self, config: CurateConfig) -> None:
        self.config = config

    def tasks(self, files: list[Path]) -> dict[str, IngestTask]:
        return {shard_name(i): IngestTask(i, str(p)) for i, p in enumerate(files)}

    def _band_keys(self, hasher: MinHasher, texts: list[str], languages: list[str] | None) -> np.ndarray:
        """Band keys of a batch; in each document's language key space when MinHash is per language."""
        keys = hasher.band_keys(texts)
        if languages is None:
            return keys
        return in_language(keys, np.array([stable_hash(x) for x in languages], dtype=np.uint64)[:, None])

    def run(self, task: IngestTask) -> IngestResult:
        config = self.config
        shard, path = task.shard, Path(task.path)
        stats = StageStats()
        rejects = Rejects(config, shard)
        extractor = Extractor(config.extract.engine, config.extract.timeout_s, config.extract.main_content,
                              config.extract.alt_texts, config.extract.strip_markdown)
        hasher = MinHasher(config.minhash.ngram, config.minhash.bands, config.minhash.rows, config.minhash.seed)
        url_hashes, url_times, url_positions, band_keys, pending_texts = [], [], [], [], []
        tag_languages = tags_languages(config)
        language_model = config.filters.get("language", {}).get("model")  # the [language] stage's model, if it names one
        pending_languages: list[str] | None = [] if config.minhash.per_language else None
        languages: dict[str, int] = {}
        doc_languages: list[str] = []  # by position, for per-language line buckets
        writer = DocumentWriter(ingested_path(config, shard))
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
                raw_bytes = len(item.html) if item.html is not None else text_bytes(doc.text)
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
                    reason = "invalid_utf8" if item.html is None else "invalid_encoding"
                    stats.dropped("read", reason, raw_bytes)
                    rejects.write("read", doc, reason)
                    continue
                stats.passed("read", raw_bytes)
                if item.html is not None and config.extract.enabled:
                    t0 = time.perf_counter()
                    text, reason = extractor.extract(doc.text)
                    extract_seconds += time.perf_counter() - t0
                    if reason:
                        stats.dropped("extract", reason, raw_bytes)
                        rejects.write("extract", doc, reason)
                        continue
                    doc.text = text
                    stats.passed("extract", raw_bytes, text_bytes(text))
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
                        band_keys.append(self._band_keys(hasher, pending_texts, pending_languages))
                        pending_texts = []
                        pending_languages = [] if pending_languages is not None else None
            if pending_texts:
                band_keys.append(self._band_keys(hasher, pending_texts, pending_languages))
            writer.close()
            rejects.close()
        except BaseException:
            writer.abort()
            rejects.abort()
            raise
        if config.url_dedup.enabled:
            save_npz(url_hashes_path(config, shard), hash=np.array(url_hashes, dtype=np.uint64),
                     time=np.array(url_times, dtype=np.int64), position=np.array(url_positions, dtype=np.int64))
        if config.minhash.enabled:
            keys = np.concatenate(band_keys) if band_keys else np.empty((0, config.minhash.bands), dtype=np.uint64)
            save_npy(band_keys_path(config, shard), keys)
        if line_buckets_per_language(config):
            names, index = np.unique(np.array(doc_languages, dtype=str), return_inverse=True)
            save_npz(line_languages_path(config, shard), names=names, index=index.astype(np.int32))
        stats.add("extract", "seconds", extract_seconds)
        stats.add("read", "seconds", time.perf_counter() - started - extract_seconds)
        return IngestResult(writer.count, stats.to_dict(), languages)

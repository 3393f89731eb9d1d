"""The documents format every stage reads and writes (see docs/formats.md).

One record per document with fields `id`, `text`, `url`, `source`, `meta`, stored as
JSONL (optionally zstd-compressed, `.jsonl.zst`) or Parquet. Readers stream: memory
stays bounded whatever the file size. Plain `.txt`/`.md` files are read as one
document each, so a folder of text is a valid input too.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from pasture.errors import PastureError

JSONL_SUFFIXES = (".jsonl", ".jsonl.zst", ".json.zst", ".jsonl.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
DOCUMENT_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES


_RECORD_FIELDS = {"id", "text", "content", "url", "source", "meta", "metadata"}


class DocumentError(PastureError):
    """An input that is not a readable documents file."""


@dataclass
class Document:
    id: str
    text: str
    url: str | None = None
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "url": self.url, "source": self.source, "meta": self.meta}

    @classmethod
    def from_record(cls, record: dict[str, Any], fallback_id: str) -> "Document":
        text = record.get("text")
        if text is None:
            text = record.get("content", "")
        if not isinstance(text, str):
            raise DocumentError(f"document {fallback_id}: field 'text' is {type(text).__name__}, not a string")
        meta = record.get("meta") or record.get("metadata") or {}
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except json.JSONDecodeError:
                meta = {"raw": meta}
        # other columns (FineWeb's dump, date, language_score, ...) are kept in meta
        extra = {k: v for k, v in record.items() if k not in _RECORD_FIELDS and v is not None}
        meta = {**extra, **meta}
        return cls(
            id=str(record.get("id") or fallback_id),
            text=text,
            url=record.get("url"),
            source=record.get("source"),
            meta=dict(meta),
        )


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(DOCUMENT_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def expand_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike], suffixes=DOCUMENT_SUFFIXES) -> list[Path]:
    """Files named by paths, folders (searched recursively) and globs, sorted, each once."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: dict[Path, None] = {}
    for item in inputs:
        item = str(item)
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        if not matches:
            raise DocumentError(f"no files match {item!r}")
        for m in matches:
            p = Path(m)
            if p.is_dir():
                for f in sorted(p.rglob("*")):
                    if f.is_file() and _suffix(f) in suffixes:
                        found[f] = None
            elif p.is_file():
                found[p] = None
            else:
                raise DocumentError(f"input {p} does not exist")
    if not found:
        raise DocumentError(f"no document files ({', '.join(suffixes)}) found in {', '.join(map(str, inputs))}")
    return list(found)


def _open_text(path: Path) -> io.TextIOBase:
    name = path.name.lower()
    if name.endswith(".zst"):
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True)
        return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
    if name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def read_documents(path: str | Path) -> Iterator[Document]:
    """Stream the documents of one file. Invalid UTF-8 bytes become U+FFFD, never an exception."""
    p = Path(path)
    suffix = _suffix(p)
    stem = p.name
    if suffix in PARQUET_SUFFIXES:
        try:
            import pyarrow.parquet as pq  # here: importing documents (every CLI command does) stays light

            pf = pq.ParquetFile(p)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise DocumentError(f"{p} is not a readable Parquet file: {e}") from None
        n = 0
        for batch in pf.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                yield Document.from_record(record, f"{stem}:{n}")
                n += 1
    elif suffix in JSONL_SUFFIXES:
        with _open_text(p) as f:
            for n, line in enumerate(f):
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DocumentError(f"{p}:{n + 1}: not a JSON line ({e.msg})") from None
                if not isinstance(record, dict):
                    raise DocumentError(f"{p}:{n + 1}: expected a JSON object, got {type(record).__name__}")
                yield Document.from_record(record, f"{stem}:{n}")
    else:
        data = p.read_bytes()
        if b"\x00" in data[:8192]:
            raise DocumentError(f"{p} looks binary (NUL bytes); expected text, JSONL or Parquet")
        yield Document(id=stem, text=data.decode("utf-8", errors="replace"), source=str(p))


def iter_documents(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[Document]:
    """Stream every document of every input file, in sorted file order."""
    for path in expand_inputs(inputs):
        yield from read_documents(path)


class DocumentWriter:
    """Writes documents to `.jsonl`, `.jsonl.zst` or `.parquet`, atomically.

    The file appears under its final name only on `close()`, so a crash never leaves
    a half-written shard that a resumed run would mistake for a finished one.
    """

    def __init__(self, path: str | Path, parquet_batch: int = 2048) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.kind = "parquet" if self.path.name.endswith(".parquet") else "jsonl"
        self.count = 0
        self.bytes = 0
        self._rows: list[dict[str, Any]] = []
        self._parquet_batch = parquet_batch
        self._pq_writer = None
        if self.kind == "jsonl":
            raw = open(self.tmp, "wb")
            if self.path.name.endswith(".zst"):
                raw = zstandard.ZstdCompressor(level=3).stream_writer(raw)
            self._out = raw

    def write(self, doc: Document | dict[str, Any]) -> None:
        record = doc.to_record() if isinstance(doc, Document) else doc
        self.count += 1
        self.bytes += len(record.get("text", "").encode("utf-8", errors="replace"))
        if self.kind == "jsonl":
            self._out.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", errors="replace"))
            return
        record = dict(record, meta=json.dumps(record.get("meta") or {}, ensure_ascii=False))
        self._rows.append(record)
        if len(self._rows) >= self._parquet_batch:
            self._flush_parquet()

    def _flush_parquet(self, even_if_empty: bool = False) -> None:
        if not self._rows and not even_if_empty:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([(k, pa.string()) for k in ("id", "text", "url", "source", "meta")])
        if self._pq_writer is None:
            self._pq_writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        self._pq_writer.write_table(pa.Table.from_pylist(self._rows, schema=schema))
        self._rows = []

    def close(self) -> None:
        if self.kind == "jsonl":
            self._out.close()
        else:
            self._flush_parquet(even_if_empty=self._pq_writer is None)
            self._pq_writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop a partial file (on error), leaving any earlier finished file untouched."""
        try:
            if self.kind == "jsonl":
                self._out.close()
            elif self._pq_writer is not None:
                self._pq_writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "DocumentWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_documents(path: str | Path, docs: Iterable[Document | dict[str, Any]]) -> int:
    """Write all `docs` to one file; returns how many were written."""
    with DocumentWriter(path) as w:
        for d in docs:
            w.write(d)
    return w.count

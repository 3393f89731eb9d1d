"""Readers for every input the curation pipeline accepts, streaming and failure-tolerant.

WARC/WARC.gz crawls (HTTP response records holding HTML), folders of `.html` files,
and the documents format (JSONL, JSONL.zst, Parquet, plain text). Each reader yields
`RawDocument`s, or `ReadProblem`s for what it had to skip (a truncated gzip, a
non-HTML payload, invalid UTF-8, an empty file), so a bad input is counted with its
reason and the run goes on.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pasture.documents import DOCUMENT_SUFFIXES, Document, DocumentError, expand_inputs, read_documents
from pasture.data.http_payload import PayloadError, decode_content, dechunk
from pasture.errors import PastureError

WARC_SUFFIXES = (".warc", ".warc.gz")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
INPUT_SUFFIXES = WARC_SUFFIXES + HTML_SUFFIXES + DOCUMENT_SUFFIXES
FORMATS = ("auto", "warc", "html", "documents")
HTML_CONTENT_TYPES = ("text/html", "application/xhtml+xml")
# how an HTML document starts (after a BOM, blanks and comments), for bodies served without a Content-Type
_HTML_START = re.compile(rb"(?:\xef\xbb\xbf)?(?:\s|<!--.*?-->)*<(?:!doctype\s+html|html|head|body)\b", re.I | re.S)


@dataclass
class RawDocument:
    """A document as read; `html` holds the undecoded page when the text still needs extraction."""

    doc: Document
    html: bytes | None = None


@dataclass
class ReadProblem:
    """Something skipped while reading: `reason` is short and countable, `detail` says where."""

    reason: str
    detail: str


def input_files(paths: list[str], fmt: str = "auto") -> list[Path]:
    """The input files of a recipe, sorted, each once."""
    if fmt not in FORMATS:
        raise PastureError(f"input.format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    suffixes = {"auto": INPUT_SUFFIXES, "warc": WARC_SUFFIXES, "html": HTML_SUFFIXES, "documents": DOCUMENT_SUFFIXES}
    wanted = suffixes[fmt]
    try:
        # expand_inputs matches on the last suffix for unknown names, so let `.gz` through and filter here
        files = expand_inputs(paths, suffixes=wanted + (".gz",))
    except DocumentError as e:
        raise PastureError(str(e)) from None
    files = [f for f in files if f.name.lower().endswith(wanted)]
    if not files:
        raise PastureError(f"no input files ({', '.join(wanted)}) found in {', '.join(map(str, paths))}")
    return files


def file_kind(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    name = path.name.lower()
    if name.endswith(WARC_SUFFIXES):
        return "warc"
    if name.endswith(HTML_SUFFIXES):
        return "html"
    return "documents"


class _TolerantGzip:
    """A gzip stream that ends quietly at a truncation and remembers it, so the records before it survive."""

    def __init__(self, path: Path) -> None:
        self._gz = gzip.open(path, "rb")
        self.error: str | None = None

    def read(self, size: int = -1) -> bytes:
        if self.error:
            return b""
        try:
            # read1: one decompression step at a time, so the bytes before a truncation are returned first
            return self._gz.read1(size if size > 0 else 1 << 16)
        except EOFError:
            self.error = "truncated_gzip"
        except (gzip.BadGzipFile, zlib.error, OSError):
            self.error = "corrupt_gzip"
        return b""

    def tell(self) -> int:
        return self._gz.tell()

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._gz.close()


def _declared_charset(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip("\"' ").lower()
    return None


def read_warc(path: Path) -> Iterator[RawDocument | ReadProblem]:
    """HTML pages from `response` records (HTTP) and `resource` records (the page alone).

    Other payloads are counted as `non_html_payload`, and unusable records with their reason
    (`truncated_record`, `no_http_headers`, `http_redirect`, `http_error_status`, bad content
    encodings). Each record is handed out only once the next one parsed (or the file ended
    cleanly): the record cut by a truncated gzip is counted under the truncation, not as a document.
    """
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    stream = _TolerantGzip(path) if path.name.lower().endswith(".gz") else open(path, "rb")
    pending: RawDocument | ReadProblem | None = None
    try:
        records = ArchiveIterator(stream, record_types=WarcRecordType.response | WarcRecordType.resource,
                                  parse_http=True, stream_detect=False)
        for n, record in enumerate(records):
            if pending is not None:
                yield pending
            pending = _warc_item(path, n, record, is_response=record.record_type == WarcRecordType.response)
    finally:
        stream.close()
    if isinstance(stream, _TolerantGzip) and stream.error:
        yield ReadProblem(stream.error, f"{path}: ended early; the records before the damaged one were kept")
    elif pending is not None:
        yield pending


def target_uri(value: str | None) -> str | None:
    """`WARC-Target-URI` as a plain URL: WARC 1.0's grammar writes it in angle brackets, WARC 1.1 bare."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value or None


def _warc_item(path: Path, n: int, record, is_response: bool) -> RawDocument | ReadProblem:
    url = target_uri(record.headers.get("WARC-Target-URI"))
    where = f"{path} record {n} ({url})"
    if record.headers.get("Content-Length") is None or record.headers.get("WARC-Truncated"):
        return ReadProblem("truncated_record", f"{where}: {record.headers.get('WARC-Truncated') or 'no length'}")
    http = record.http_headers if is_response else None
    if is_response and http is None:
        return ReadProblem("no_http_headers", where)
    if http is not None and not 200 <= http.status_code < 300:
        reason = "http_redirect" if 300 <= http.status_code < 400 else "http_error_status"
        return ReadProblem(reason, f"{where}: HTTP {http.status_code}")
    headers = http if http is not None else record.headers
    content_type = headers.get("Content-Type") or record.headers.get("WARC-Identified-Payload-Type") or ""
    mime = content_type.split(";")[0].strip().lower()
    if mime and mime not in HTML_CONTENT_TYPES:
        return ReadProblem("non_html_payload", f"{where}: {mime}")
    payload = record.reader.read()
    if len(payload) < record.content_length:
        return ReadProblem("truncated_record", f"{where}: {len(payload)} of {record.content_length} bytes")
    if http is not None:
        if "chunked" in (http.get("Transfer-Encoding") or "").lower():
            payload = dechunk(payload)
        try:
            payload = decode_content(payload, http.get("Content-Encoding") or "")
        except PayloadError as e:
            return ReadProblem(e.reason, f"{where}: {e}")
    if not payload.strip():
        return ReadProblem("empty_payload", where)
    if not mime and not _HTML_START.match(payload[:1024]):  # no type given: HTML only when it says so itself
        return ReadProblem("non_html_payload", f"{where}: no content type")
    record_id = record.headers.get("WARC-Record-ID") or f"{path.name}:{n}"
    meta = {"date": record.headers.get("WARC-Date"), "charset": _declared_charset(content_type)}
    return RawDocument(Document(id=record_id.strip("<>"), text="", url=url, source=path.name, meta=meta), html=payload)


def read_html_file(path: Path) -> Iterator[RawDocument | ReadProblem]:
    data = path.read_bytes()
    if not data.strip():
        yield ReadProblem("empty_file", str(path))
    elif b"\x00" in data[:4096] or b"<" not in data[:65536]:
        yield ReadProblem("non_html_payload", f"{path}: no HTML markup")
    else:
        yield RawDocument(Document(id=str(path), text="", url=None, source=str(path.parent), meta={}), html=data)


def read_document_file(path: Path) -> Iterator[RawDocument | ReadProblem]:
    """Documents-format records; text with invalid UTF-8 (decoded to U+FFFD) is reported, not kept."""
    if path.stat().st_size == 0:
        yield ReadProblem("empty_file", str(path))
        return
    try:
        for doc in read_documents(path):
            if "\ufffd" in doc.text:
                yield ReadProblem("invalid_utf8", f"{path}: document {doc.id}")
            elif not doc.text.strip():
                yield ReadProblem("empty_document", f"{path}: document {doc.id}")
            else:
                yield RawDocument(doc)
    except EOFError:
        yield ReadProblem("truncated_file", str(path))
    except _corrupt_file_errors() as e:
        yield ReadProblem("corrupt_file", f"{path}: {e}")


def _corrupt_file_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (DocumentError, OSError, zlib.error, ValueError, zstandard.ZstdError)


def read_source(path: Path, fmt: str = "auto") -> Iterator[RawDocument | ReadProblem]:
    """Stream one input file, whatever its kind."""
    kind = file_kind(path, fmt)
    if path.stat().st_size == 0:
        yield ReadProblem("empty_file", str(path))
    elif kind == "warc":
        yield from read_warc(path)
    elif kind == "html":
        yield from read_html_file(path)
    else:
        yield from read_document_file(path)

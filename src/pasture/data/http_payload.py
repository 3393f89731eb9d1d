"""HTTP bodies as crawlers store them in WARC response records, turned back into the page's bytes.

Common Crawl stores bodies already de-chunked and decompressed (and renames the headers to
`X-Crawler-Transfer-Encoding` / `X-Crawler-Content-Encoding`); wget, Heritrix, Browsertrix
and warcprox store the bytes as they came off the wire. Both are read here, leniently: a body
whose header says chunked but that does not start with a chunk-size line is taken as already
de-chunked, and a body that says gzip but lacks gzip's magic bytes as already decompressed.
"""

from __future__ import annotations

import re
import zlib

import brotli
import zstandard

MAX_DECODED_BYTES = 1 << 28  # a page that inflates past 256 MiB is a compression bomb, not a document
_CHUNK_SIZE = re.compile(rb"[ \t]*([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n")
_GZIP_MAGIC = b"\x1f\x8b"


class PayloadError(ValueError):
    """A body that cannot be decoded; `reason` is short and countable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def dechunk(body: bytes) -> bytes:
    """The body of a `Transfer-Encoding: chunked` message without its chunk-size lines and trailers.

    A body that does not start with a chunk-size line was de-chunked by the crawler and comes back
    as it is; a body cut inside a chunk (a truncated capture) keeps the bytes it has.
    """
    if not _CHUNK_SIZE.match(body):
        return body
    out, pos = [], 0
    while (m := _CHUNK_SIZE.match(body, pos)) is not None:
        size = int(m.group(1), 16)
        if size == 0:
            break
        start = m.end()
        out.append(body[start : start + size])
        pos = start + size
        if body.startswith(b"\r\n", pos):
            pos += 2
        elif body.startswith(b"\n", pos):
            pos += 1
    return b"".join(out)


def _looks_decoded(body: bytes) -> bool:
    """Markup or text already: what a crawler that decompressed the body but kept the header leaves."""
    head = body[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"<") or (bool(head) and b"\x00" not in head and head.isascii())


def _inflate(body: bytes, wbits: int) -> bytes:
    """zlib-family decompression, bounded; a truncated stream gives the bytes before the cut."""
    d = zlib.decompressobj(wbits)
    out = d.decompress(body, MAX_DECODED_BYTES)
    if d.unconsumed_tail:
        raise PayloadError("decoded_too_large", f"inflates past {MAX_DECODED_BYTES} bytes")
    return out


def _brotli(body: bytes) -> bytes:
    d = brotli.Decompressor()
    out = d.process(body, output_buffer_limit=MAX_DECODED_BYTES)
    if len(out) >= MAX_DECODED_BYTES and not d.is_finished():
        raise PayloadError("decoded_too_large", f"inflates past {MAX_DECODED_BYTES} bytes")
    return out


def _zstd(body: bytes) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(body)
    out = reader.read(MAX_DECODED_BYTES)
    if reader.read(1):
        raise PayloadError("decoded_too_large", f"inflates past {MAX_DECODED_BYTES} bytes")
    return out


def _decode_one(body: bytes, coding: str) -> bytes:
    if coding in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS) if body.startswith(_GZIP_MAGIC) else body
    if coding == "deflate":  # RFC 9110 means zlib-wrapped; some servers send raw deflate
        try:
            return _inflate(body, zlib.MAX_WBITS)
        except zlib.error:
            return _inflate(body, -zlib.MAX_WBITS)
    if coding == "br":
        return _brotli(body)
    if coding == "zstd":
        return _zstd(body)
    raise PayloadError("unsupported_content_encoding", coding)


def decode_content(body: bytes, content_encoding: str) -> bytes:
    """The body with its `Content-Encoding` codings undone, last applied first.

    Raises `PayloadError` for an unknown coding, a corrupt stream, or one that inflates too far.
    A body that fails to decode but already looks like markup was decoded by the crawler and is kept.
    """
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    for coding in reversed([c for c in codings if c and c != "identity"]):
        try:
            body = _decode_one(body, coding)
        except (zlib.error, brotli.error, zstandard.ZstdError) as e:
            if _looks_decoded(body):
                return body
            raise PayloadError("corrupt_content_encoding", f"{coding}: {e}") from None
    return body

"""WARCs as real crawlers write them (written here with warcio): bracketed or bare target URIs,
chunked and compressed HTTP bodies, resource records, records without HTTP headers, truncations."""

import gzip
import io
import uuid
import zlib
from collections import Counter

import brotli
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from curate_corpus import page, recipe, stdlib_texts
from pasture.data.curate import run_curation
from pasture.documents import iter_documents
from pasture.data.extract import Extractor
from pasture.data.http_payload import dechunk, decode_content
from pasture.data.sources import RawDocument, ReadProblem, read_warc


def chunked(body: bytes, size: int) -> bytes:
    """HTTP/1.1 chunked transfer coding, `size` bytes a chunk (boundaries fall inside tags), with a chunk extension."""
    parts = [b"%x;ext=1\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\nX-Trailer: t\r\n\r\n"


ENCODE = {"": lambda b: b, "gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress,
          "deflate-raw": lambda b: zlib.compress(b)[2:-4]}


def write_crawl(path, bracketed: bool, pages: list[bytes]) -> list[str]:
    """One response record per page and per body style (plain, chunked, each Content-Encoding, both);
    returns the URLs written, in order."""
    styles = [(te, ce) for te in ("", "chunked") for ce in ENCODE]
    urls = []
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=path.name.endswith(".gz"))
        for i, html in enumerate(pages):
            te, ce = styles[i % len(styles)]
            url = f"https://example.org/page{i}/{te or 'whole'}-{ce or 'identity'}"
            body = ENCODE[ce](html)
            headers = [("Content-Type", "text/html; charset=utf-8")]
            if ce:
                headers.append(("Content-Encoding", "deflate" if ce == "deflate-raw" else ce))
            if te:
                headers.append(("Transfer-Encoding", "chunked"))
                body = chunked(body, 97)
            record = writer.create_warc_record(f"<{url}>" if bracketed else url, "response", payload=io.BytesIO(body),
                                               http_headers=StatusAndHeaders("200 OK", headers, protocol="HTTP/1.1"),
                                               warc_headers_dict={"WARC-Date": "2024-01-01T00:00:00Z"})
            writer.write_record(record)
            urls.append(url)
    return urls


def read_all(path):
    items = list(read_warc(path))
    return [i for i in items if isinstance(i, RawDocument)], Counter(i.reason for i in items if isinstance(i, ReadProblem))


def test_dechunk_and_decode_each_content_encoding():
    html = page("A line of text.\n" * 50)
    assert dechunk(chunked(html, 7)) == html
    assert dechunk(html) == html  # a crawler that de-chunked already but kept the header
    assert dechunk(chunked(html, 64)[:300]) == html[: len(dechunk(chunked(html, 64)[:300]))]  # cut capture: a prefix
    for coding in ("gzip", "deflate", "br"):
        assert decode_content(ENCODE[coding](html), coding) == html
    assert decode_content(ENCODE["deflate-raw"](html), "deflate") == html
    assert decode_content(gzip.compress(brotli.compress(html)), "br, gzip") == html  # applied in order, undone in reverse
    assert decode_content(html, "gzip") == html  # the header kept after decompression


def test_both_uri_styles_every_body_style_give_the_same_documents(tmp_path):
    texts = stdlib_texts(20, chars=1200)
    pages = [page(t, title=f"page {i}") for i, t in enumerate(texts)]
    docs = {}
    for style in ("bare", "bracketed"):
        path = tmp_path / f"{style}.warc.gz"
        urls = write_crawl(path, style == "bracketed", pages)
        kept, problems = read_all(path)
        assert problems == Counter()
        assert [d.doc.url for d in kept] == urls
        assert [d.html for d in kept] == pages  # de-chunked and decoded to the exact page bytes
        docs[style] = kept
    assert [d.doc.url for d in docs["bare"]] == [d.doc.url for d in docs["bracketed"]]
    stats = run_curation(recipe([str(tmp_path / "bare.warc.gz"), str(tmp_path / "bracketed.warc.gz")], tmp_path / "out",
                                minhash={"enabled": False}, line_dedup={"enabled": False}))
    assert stats["stages"]["read"]["docs_out"] == 40
    assert stats["stages"]["url_dedup"]["removed"] == {"url_duplicate": 20}  # each URL once, whatever its style
    out = list(iter_documents(tmp_path / "out" / "data"))
    assert sorted(d.url for d in out) == sorted(urls)
    for d in out:
        i = int(d.url.split("/page")[1].split("/")[0])
        assert d.text.split("\n")[0] == f"page {i}"  # the title first: no chunk-size line before it
        assert d.text == Extractor("resiliparse").extract(pages[i].decode())[0]  # as if served whole and plain


def _raw_record(record_type: str, uri: str, block: bytes, extra: str = "", length: int | None = None) -> bytes:
    head = (f"WARC/1.0\r\nWARC-Type: {record_type}\r\nWARC-Target-URI: {uri}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
            f"WARC-Record-ID: <urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, uri)}>\r\n{extra}Content-Length: {len(block) if length is None else length}\r\n\r\n")
    return head.encode() + block + b"\r\n\r\n"


def test_resource_records_no_http_headers_statuses_and_truncations_are_counted_not_fatal(tmp_path):
    html = page("Resource records hold the page without HTTP headers.\n" * 5)
    http = lambda status, extra=b"": b"HTTP/1.1 " + status + b"\r\nContent-Type: text/html\r\n" + extra + b"\r\n"
    records = [
        _raw_record("resource", "<https://example.org/resource>", html, "Content-Type: text/html\r\n"),
        _raw_record("response", "ftp://example.org/a.html", html, "Content-Type: text/html\r\n"),  # no HTTP headers
        _raw_record("response", "dns:example.org", b"20240101 example.org. 300 IN A 10.0.0.1", "Content-Type: text/dns\r\n"),
        _raw_record("response", "https://example.org/moved", http(b"301 Moved", b"Location: /new\r\n") + b"<a>moved</a>",
                    "Content-Type: application/http; msgtype=response\r\n"),
        _raw_record("response", "https://example.org/gone", http(b"404 Not Found") + b"<p>gone</p>",
                    "Content-Type: application/http; msgtype=response\r\n"),
        _raw_record("response", "https://example.org/zip", http(b"200 OK", b"Content-Encoding: compress\r\n") + b"\x1f\x9d\x90",
                    "Content-Type: application/http; msgtype=response\r\n"),
        _raw_record("response", "https://example.org/bad-gzip", http(b"200 OK", b"Content-Encoding: gzip\r\n")
                    + b"\x1f\x8b\x08\x00garbage!garbage!", "Content-Type: application/http; msgtype=response\r\n"),
        _raw_record("response", "https://example.org/big", http(b"200 OK") + html,
                    "Content-Type: application/http; msgtype=response\r\nWARC-Truncated: length\r\n"),
        _raw_record("response", "<https://example.org/ok>", http(b"200 OK") + html,
                    "Content-Type: application/http; msgtype=response\r\n"),
        _raw_record("response", "https://example.org/untyped", b"HTTP/1.1 200 OK\r\n\r\n<!DOCTYPE html>" + html,
                    "Content-Type: application/http; msgtype=response\r\n"),  # no Content-Type: sniffed as HTML
        _raw_record("response", "https://example.org/untyped.bin", b"HTTP/1.1 200 OK\r\n\r\n\x89PNG\r\n\x1a\n",
                    "Content-Type: application/http; msgtype=response\r\n"),
    ]
    cut = _raw_record("resource", "https://example.org/cut", html, "Content-Type: text/html\r\n")
    path = tmp_path / "mixed.warc"
    path.write_bytes(b"".join(records) + cut[: len(cut) // 2])  # the file ends inside the last record
    kept, problems = read_all(path)
    assert [d.doc.url for d in kept] == ["https://example.org/resource", "https://example.org/ok",
                                         "https://example.org/untyped"]
    assert [d.html for d in kept] == [html, html, b"<!DOCTYPE html>" + html]
    assert problems == Counter({"no_http_headers": 2, "non_html_payload": 1, "http_redirect": 1, "http_error_status": 1,
                                "unsupported_content_encoding": 1, "corrupt_content_encoding": 1, "truncated_record": 2})
    stats = run_curation(recipe([str(path)], tmp_path / "out", minhash={"enabled": False}, line_dedup={"enabled": False}))
    assert stats["stages"]["read"]["docs_out"] == 3
    assert stats["stages"]["read"]["removed"]["truncated_record"] == 2

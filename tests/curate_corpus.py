"""Real input for the curation tests, made on the spot: stdlib text as HTML pages, WARCs, JSONL."""

from __future__ import annotations

import html
import io
import json
import sysconfig
from pathlib import Path


def stdlib_texts(count: int, chars: int = 3000) -> list[str]:
    """Distinct passages of real English-and-code text: the sources of the Python standard library."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) >= chars and "\ufffd" not in text:
            texts.append(text[:chars])
        if len(texts) == count:
            return texts
    raise RuntimeError(f"only {len(texts)} stdlib files of {chars} characters")


def page(text: str, title: str = "page") -> bytes:
    """An HTML page: navigation and footer boilerplate around the text as paragraphs."""
    paragraphs = "".join(f"<p>{html.escape(line)}</p>" for line in text.split("\n") if line.strip())
    return (f"<html><head><title>{title}</title></head><body><nav><a href='/'>Home</a> <a href='/x'>About</a></nav>"
            f"<article><h1>{html.escape(title)}</h1>{paragraphs}</article>"
            f"<footer>Copyright example.com</footer></body></html>").encode()


def write_warc(path: Path, records: list[tuple[str, str, bytes, str]]) -> None:
    """records: (url, WARC-Date, payload, content type) as HTTP response records."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=path.name.endswith(".gz"))
        for url, date, payload, content_type in records:
            headers = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(payload),
                                                          http_headers=headers,
                                                          warc_headers_dict={"WARC-Date": date}))


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def recipe(inputs: list[str], out: Path, **sections: dict) -> dict:
    """A small recipe: every stage on, 2 workers, with per-section overrides."""
    base = {"input": {"paths": inputs}, "output": {"dir": str(out), "format": "jsonl"},
            "line_dedup": {"bucket_docs": 1000}, "engine": {"workers": 1}}
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return base

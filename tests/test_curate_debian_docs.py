"""Curation on real web-like input: Python's HTML documentation (Debian's python3-doc) as a WARC.

`.ci/run` installs python3-doc (failing when it cannot) and sets PASTURE_REQUIRE_PYTHON_DOCS,
under which a missing package fails this test; elsewhere it skips when the package is absent.
"""

import os
from pathlib import Path

import pytest
from curate_corpus import recipe, write_warc

from pasture.data.curate import run_curation
from pasture.documents import iter_documents

DOCS = Path("/usr/share/doc/python3-doc/html")
if not (DOCS / "library").is_dir():
    if os.environ.get("PASTURE_REQUIRE_PYTHON_DOCS"):
        raise RuntimeError(f"PASTURE_REQUIRE_PYTHON_DOCS is set but {DOCS / 'library'} is missing: apt-get install python3-doc")
    pytestmark = pytest.mark.skip(reason="python3-doc is not installed (CI installs it and requires it)")


def test_python_docs_warc_through_the_pipeline(tmp_path):
    pages = sorted((DOCS / "library").glob("*.html"))[:40]
    records = []
    for p in pages:
        url = f"https://docs.python.org/3/library/{p.name}"
        records.append((url, "2023-05-01T00:00:00Z", p.read_bytes(), "text/html; charset=utf-8"))
    # a later crawl of the first 5 pages (one URL written differently): URL dedup keeps these
    for p in pages[:5]:
        url = f"http://docs.python.org/3/library/{p.name}?utm_source=x"
        records.append((url, "2024-02-01T00:00:00Z", p.read_bytes(), "text/html"))
    records.append(("https://docs.python.org/logo.png", "2024-02-01T00:00:00Z", b"\x89PNG" + bytes(100), "image/png"))
    write_warc(tmp_path / "crawl.warc.gz", records)

    stats = run_curation(recipe([str(tmp_path / "crawl.warc.gz")], tmp_path / "out",
                                heuristic={"enabled": False}, safety={"enabled": True}, language={"enabled": True}))
    s = stats["stages"]
    assert s["read"]["docs_in"] == 45 and s["read"]["removed"] == {"non_html_payload": 1}
    assert s["url_dedup"]["removed"] == {"url_duplicate": 5}
    kept = list(iter_documents(tmp_path / "out" / "data"))
    newest = [d for d in kept if d.url.startswith("http://")]
    assert len(newest) == 5 and all(d.meta["date"].startswith("2024") for d in newest)
    assert s["url_dedup"]["docs_out"] == 40 and len(kept) == s["output"]["docs_out"] > 30
    assert all(d.meta["language"] == "en" for d in kept)
    assert all("<div" not in d.text and "Navigation" not in d.text[:200] for d in kept)
    assert any(">>> " in d.text or "import " in d.text for d in kept)  # code examples survive extraction

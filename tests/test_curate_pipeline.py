"""The curation pipeline end to end: sources, extraction, bad input, per-document stages, resume, CLI."""

import json
import re

import pytest
from curate_corpus import page, recipe, stdlib_texts, write_jsonl, write_warc

from pasture.cli import main
from pasture.data.curate import run_curation
from pasture.data.extract import Extractor
from pasture.documents import Document, iter_documents
from pasture.errors import PastureError


def test_extraction_keeps_alt_text_code_and_math_and_drops_markdown():
    html = """<html><body><nav>Home | About</nav><article><h1>Notes</h1>
    <p>Energy is <img src="e.png" alt="E = mc^2"> by **Einstein**, see [the paper](http://x).</p>
    <pre><code># a comment, not a heading
    def f(x):
        return x * 2</code></pre>
    <p>A fraction: <math alttext="\\frac{a}{b}"><mfrac><mi>a</mi><mi>b</mi></mfrac></math>.</p>
    <p>## Not a heading either, and long enough to be main content of this page for sure.</p>
    </article><footer>Copyright</footer></body></html>"""
    text, reason = Extractor("resiliparse").extract(html)
    assert reason is None
    assert "Energy is E = mc^2 by Einstein, see the paper." in text
    assert "# a comment, not a heading\ndef f(x):\n    return x * 2" in text.replace("    def", "def").replace("        return", "    return")
    assert "\\frac{a}{b}" in text
    assert "Not a heading either" in text and "##" not in text and "**" not in text
    assert "Home" not in text and "Copyright" not in text
    assert Extractor("resiliparse").extract("<html><body></body></html>") == (None, "no_text")


class DropShort:
    """A per-document stage as pasture.data.filters defines them: drops short docs, tags the rest."""

    name = "short"

    def __init__(self, min_words: int = 50) -> None:
        self.min_words = min_words

    def process(self, doc: Document) -> str | None:
        if len(doc.text.split()) < self.min_words:
            return "too_few_words"
        doc.meta["words"] = len(doc.text.split())
        return None


class CrashOnce:
    """Raises on one document id (to simulate a crash), and counts the documents it saw."""

    name = "crash"
    crash_on: str | None = None
    seen: list[str] = []

    def __init__(self) -> None:
        pass

    def fit(self, docs) -> None:
        CrashOnce.fitted = len(list(docs))

    def process(self, doc: Document) -> str | None:
        if doc.id == CrashOnce.crash_on:
            raise RuntimeError("simulated crash")
        CrashOnce.seen.append(doc.id)
        return None


REGISTRY = {"short": DropShort, "crash": CrashOnce}


def test_bad_input_is_counted_with_reasons_and_the_run_goes_on(tmp_path):
    texts = stdlib_texts(10)
    good = tmp_path / "in"
    good.mkdir()
    write_warc(good / "ok.warc.gz", [(f"http://a.org/{i}", "2024-01-01T00:00:00Z", page(t), "text/html; charset=utf-8")
                                     for i, t in enumerate(texts[:4])]
               + [("http://a.org/logo.png", "2024-01-01T00:00:00Z", b"\x89PNG\r\n\x1a\n" + bytes(200), "image/png")])
    write_warc(tmp_path / "full.warc.gz", [(f"http://b.org/{i}", "2024-01-01T00:00:00Z", page(t * 3), "text/html")
                                           for i, t in enumerate(texts[4:10])])
    data = (tmp_path / "full.warc.gz").read_bytes()
    (good / "cut.warc.gz").write_bytes(data[: len(data) * 2 // 3])
    (good / "page.html").write_bytes(page(texts[0][:1500]))
    (good / "binary.html").write_bytes(b"\x00\x01\x02PNG" * 50)
    (good / "empty.html").write_bytes(b"")
    (good / "empty.jsonl").write_bytes(b"")
    lines = [json.dumps({"id": "fine", "text": texts[1]}).encode(), b'{"id": "broken", "text": "caf\xe9 \xff\xfe na\xefve"}']
    (good / "docs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    stats = run_curation(recipe([str(good)], tmp_path / "out", minhash={"enabled": False}))
    read = stats["stages"]["read"]
    assert read["removed"] == {"non_html_payload": 2, "empty_file": 2, "truncated_gzip": 1, "invalid_utf8": 1}
    kept_from_cut = sum((d.url or "").startswith("http://b.org/") for d in iter_documents(tmp_path / "out" / "data"))
    assert 1 <= kept_from_cut < 6  # the records before the damage survive
    assert read["docs_out"] == 4 + kept_from_cut + 1 + 1
    reasons = [d.meta["reject_reason"] for d in iter_documents(tmp_path / "out" / "rejects" / "read")]
    assert sorted(reasons) == sorted(["non_html_payload"] * 2 + ["empty_file"] * 2 + ["truncated_gzip", "invalid_utf8"])


def test_filter_stages_drop_with_reasons_and_tag(tmp_path):
    texts = stdlib_texts(6, chars=2000)
    records = [{"id": f"long{i}", "text": t} for i, t in enumerate(texts)]
    records += [{"id": f"short{i}", "text": f"{w} is all this one says"} for i, w in enumerate(["alpha", "beta", "gamma"])]
    write_jsonl(tmp_path / "d.jsonl", records)
    stats = run_curation(recipe([str(tmp_path / "d.jsonl")], tmp_path / "out", short={"min_words": 20}),
                         registry=REGISTRY)
    assert stats["stages"]["short"]["removed"] == {"too_few_words": 3}
    assert stats["stages"]["output"]["docs_out"] == 6
    kept = list(iter_documents(tmp_path / "out" / "data"))
    assert all(d.meta["words"] >= 20 for d in kept)
    assert (tmp_path / "out" / "stats.md").read_text().count("too_few_words") == 1
    with pytest.raises(PastureError, match=r"\[short\]"):
        run_curation(recipe([str(tmp_path / "d.jsonl")], tmp_path / "out2", short={"bogus": 1}), registry=REGISTRY)
    with pytest.raises(PastureError, match=r"unknown section \[nonsense\]"):
        run_curation(recipe([str(tmp_path / "d.jsonl")], tmp_path / "out3", nonsense={"x": 1}), registry=REGISTRY)


def test_resume_skips_finished_shards_after_a_crash(tmp_path):
    texts = stdlib_texts(12, chars=1500)
    for shard in range(4):
        write_jsonl(tmp_path / f"part{shard}.jsonl", [{"id": f"s{shard}d{i}", "text": texts[shard * 3 + i]}
                                                       for i in range(3)])
    r = recipe([str(tmp_path / "part*.jsonl")], tmp_path / "out", crash={})
    CrashOnce.crash_on, CrashOnce.seen = "s2d1", []
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_curation(r, registry=REGISTRY)
    assert CrashOnce.seen == ["s0d0", "s0d1", "s0d2", "s1d0", "s1d1", "s1d2", "s2d0"]
    done = sorted(p.stem for p in (tmp_path / "out" / "_work" / "done" / "filter").glob("*.json"))
    assert done == ["s00000", "s00001"]
    ingest_marker = tmp_path / "out" / "_work" / "done" / "ingest" / "s00003.json"
    before = ingest_marker.stat().st_mtime_ns
    CrashOnce.crash_on, CrashOnce.seen = None, []
    stats = run_curation(r, registry=REGISTRY)
    assert CrashOnce.seen == ["s2d0", "s2d1", "s2d2", "s3d0", "s3d1", "s3d2"]  # shards 0 and 1 were not redone
    assert ingest_marker.stat().st_mtime_ns == before
    assert stats["stages"]["output"]["docs_out"] == 12  # counts of finished shards come from their markers
    assert sorted(d.id for d in iter_documents(tmp_path / "out" / "data")) == sorted(f"s{s}d{i}" for s in range(4)
                                                                                  for i in range(3))
    with pytest.raises(PastureError, match="different recipe"):
        run_curation(recipe([str(tmp_path / "part*.jsonl")], tmp_path / "out", minhash={"bands": 10}))


def test_cli_runs_a_recipe_with_overrides_and_names_bad_keys(tmp_path, capsys):
    texts = stdlib_texts(5)
    (tmp_path / "pages").mkdir()
    for i, t in enumerate(texts):
        (tmp_path / "pages" / f"p{i}.html").write_bytes(page(t))
    (tmp_path / "r.toml").write_text(f'[input]\npaths = ["{tmp_path / "pages"}"]\n[output]\ndir = "{tmp_path / "out"}"\n')
    assert main(["curate", str(tmp_path / "r.toml"), "minhash.bands=10", "engine.workers=1", "output.format=parquet"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["documents_read"] == 5 and summary["documents_kept"] == 5
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["recipe"]["minhash"]["bands"] == 10
    assert len(list(iter_documents(tmp_path / "out" / "data"))) == 5
    assert main(["curate", str(tmp_path / "r.toml"), "minhash.bandz=10"]) == 2
    assert "minhash.bandz" in capsys.readouterr().err
    assert main(["curate", str(tmp_path / "r.toml"), "minhash.bands=many"]) == 2
    assert "minhash.bands: expected int" in capsys.readouterr().err


def test_every_curate_subcommand_explains_itself_with_help(tmp_path, capsys):
    for flag in ("--help", "-h"):
        assert main(["curate", "web", flag]) == 0
        out = capsys.readouterr().out
        sections = re.findall(r"^\[(\w+)\]", out, flags=re.M)
        assert sections == ["input", "output", "extract", "url_dedup", "minhash", "line_dedup", "heuristic", "language",
                            "quality", "safety", "domains", "mix", "engine"]
        # the recipe's values, the defaults of keys it leaves out, and the recipe's own comments
        assert re.search(r"^  per_language = true +# Llama 3: de-duplicate within each language", out, flags=re.M)
        for line in ("  bands = 14", "  batch_docs = 512", "  min_words = 50", "  kl_min_docs = 20", "  enabled = false",
                     '  pii = ["email", "ip", "phone"]', "  overwrite = false", '  dir = "curated"'):
            assert line in out.splitlines() or any(l.startswith(line + " ") for l in out.splitlines()), line
    # a recipe file of its own: the sections it has, then every section it leaves to the defaults
    (tmp_path / "r.toml").write_text('[input]\npaths = ["x"]  # my crawl\n[output]\ndir = "o"\n[minhash]\nbands = 9\n')
    assert main(["curate", str(tmp_path / "r.toml"), "engine.workers=1", "--help"]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^\[(\w+)\]", out, flags=re.M) == ["input", "output", "minhash", "engine", "extract",
                                                            "url_dedup", "line_dedup"]
    assert re.search(r'^  paths = \["x"\] +# my crawl$', out, flags=re.M)
    assert {"  bands = 9", "  rows = 8", "  workers = 1"} <= set(out.splitlines())  # recipe, default, override
    assert not (tmp_path / "o").exists()  # help runs nothing
    for argv in (["curate", "--help"], ["curate", "train-quality", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0 and "usage: pasture curate" in capsys.readouterr().out


def test_a_200_mb_document_is_skipped_with_its_reason(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    texts = stdlib_texts(3)
    for i, t in enumerate(texts):
        (folder / f"p{i}.html").write_bytes(page(t))
    with open(folder / "huge.html", "wb") as f:
        f.write(b"<html><body><p>")
        chunk = b"word " * 200_000
        for _ in range(200):
            f.write(chunk)  # 200 MB
        f.write(b"</p></body></html>")
    stats = run_curation(recipe([str(folder)], tmp_path / "out", minhash={"enabled": False}))
    read = stats["stages"]["read"]
    assert read["removed"] == {"document_too_large": 1}
    assert read["docs_out"] == 3
    reasons = [d.meta["reject_reason"] for d in iter_documents(tmp_path / "out" / "rejects" / "read")]
    assert reasons == ["document_too_large"]

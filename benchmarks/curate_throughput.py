"""pasture curate vs datatrove on the same input, one worker each (numbers are per core).

  python benchmarks/curate_throughput.py [--pages 600]

Input: a WARC of HTML pages made from the Python standard library's sources (real
English and code), plus near-duplicate copies, so MinHash has work to do. Two
comparisons:
  extract: WARC -> main-content text -> JSONL (datatrove: WarcReader + Trafilatura + JsonlWriter;
           pasture: the same with trafilatura, and with its default resiliparse)
  minhash: JSONL -> 14x8 MinHash over word 5-grams -> de-duplicated JSONL (datatrove's 4 stages;
           pasture's signatures -> buckets -> clusters -> filter), words split by pasture's splitter
           on both sides
  pipeline: WARC -> extraction -> Gopher repetition + Gopher quality filters -> JSONL, the part
           of the Llama 3 / FineWeb pipeline both tools run offline (datatrove's language filter and
           C4 bad-words lists download models/lists, so they are off on both sides). Both sides
           split words the same way: datatrove's Gopher filters get pasture's word splitter
           (its default for English is spaCy's tokenizer, which splits code differently and
           needs spaCy), so the rules see the same words and the kept counts compare.
datatrove runs only when it imports: `pip install datatrove==0.10.1` next to pasture. Its
hashing passes str to xxhash, which xxhash >= 4 refuses ("TypeError: Strings must be encoded
before hashing", datatrove issue #508; its `processing` extra pins xxhash<4), so put xxhash 3
and the readers' and writers' own dependencies first on the path (benchmarks/README.md):
  pip install --target /tmp/pasture-bench-datatrove 'xxhash>=3.5,<4' faust-cchardet python-magic orjson
  PYTHONPATH=/tmp/pasture-bench-datatrove:src python benchmarks/curate_throughput.py
"""

from __future__ import annotations

import argparse
import html
import io
import json
import random
import shutil
import sysconfig
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def build_input(root: Path, pages: int) -> tuple[Path, Path, int, int]:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    rng = random.Random(0)
    texts = [p.read_text(errors="replace")[:6000] for p in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
             if p.stat().st_size > 6000][: pages * 4 // 5]
    texts += [" ".join(w if rng.random() > 0.01 else "x" for w in t.split(" ")) for t in texts[: pages - len(texts)]]
    warc, jsonl = root / "pages.warc.gz", root / "docs.jsonl"
    html_bytes = 0
    with open(warc, "wb") as f, open(jsonl, "w") as j:
        writer = WARCWriter(f, gzip=True)
        for i, text in enumerate(texts):
            body = "".join(f"<p>{html.escape(line)}</p>" for line in text.split("\n") if line.strip())
            payload = (f"<html><head><title>p{i}</title></head><body><nav>Home About</nav><article>{body}</article>"
                       f"<footer>Copyright</footer></body></html>").encode()
            html_bytes += len(payload)
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(f"http://bench.org/{i}", "response", payload=io.BytesIO(payload),
                                                          http_headers=headers))
            j.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    return warc, jsonl, len(texts), html_bytes


def pasture_run(inputs: list[str], out: Path, **sections) -> tuple[float, dict]:
    from pasture.data.curate import run_curation

    recipe = {"input": {"paths": inputs}, "output": {"dir": str(out), "format": "jsonl", "write_rejects": False},
              "engine": {"workers": 1}}
    recipe.update(sections)
    t0 = time.perf_counter()
    stats = run_curation(recipe)
    return time.perf_counter() - t0, stats


def datatrove_extract(warc: Path, out: Path) -> float:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import JsonlWriter

    t0 = time.perf_counter()
    LocalPipelineExecutor(pipeline=[WarcReader(str(warc.parent), glob_pattern="*.warc.gz"), Trafilatura(timeout=5.0),
                                    JsonlWriter(str(out / "data"), compression=None)],
                          tasks=1, workers=1, logging_dir=str(out / "logs")).run()
    return time.perf_counter() - t0


def pasture_word_splitter():
    """datatrove's WordTokenizer interface over pasture's word splitting (TextFeatures.words)."""
    import re

    from datatrove.utils.word_tokenizers import WordTokenizer

    from pasture.data.filters.base import TextFeatures

    class PastureWords(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return TextFeatures(text).words

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            spans, pos = [], 0
            for word in TextFeatures(text).words:  # the words in order: each one's place after the last
                start = text.find(word, pos)
                spans.append((start, start + len(word)))
                pos = start + len(word)
            return spans

        def sent_tokenize(self, text: str) -> list[str]:
            return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]

    return PastureWords("en")


def datatrove_pipeline(warc: Path, out: Path) -> tuple[float, int]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import JsonlWriter

    words = pasture_word_splitter()
    t0 = time.perf_counter()
    LocalPipelineExecutor(pipeline=[WarcReader(str(warc.parent), glob_pattern="*.warc.gz"), Trafilatura(timeout=5.0),
                                    GopherRepetitionFilter(language=words), GopherQualityFilter(language=words),
                                    JsonlWriter(str(out / "data"), compression=None)],
                          tasks=1, workers=1, logging_dir=str(out / "logs")).run()
    kept = sum(1 for f in (out / "data").glob("*.jsonl") for _ in open(f))
    return time.perf_counter() - t0, kept


def datatrove_minhash(jsonl: Path, out: Path) -> tuple[float, int]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    read = lambda: JsonlReader(str(jsonl.parent), glob_pattern="docs.jsonl")  # noqa: E731
    t0 = time.perf_counter()
    signatures = MinhashDedupSignature(str(out / "sigs"), config=config, language=pasture_word_splitter())
    LocalPipelineExecutor([read(), signatures], tasks=1, workers=1,
                          logging_dir=str(out / "l1")).run()
    LocalPipelineExecutor([MinhashDedupBuckets(str(out / "sigs"), str(out / "buckets"), config=config)], tasks=14,
                          workers=1, logging_dir=str(out / "l2")).run()
    LocalPipelineExecutor([MinhashDedupCluster(str(out / "buckets"), str(out / "remove"), config=config)], tasks=1,
                          workers=1, logging_dir=str(out / "l3")).run()
    LocalPipelineExecutor([read(), MinhashDedupFilter(str(out / "remove")), JsonlWriter(str(out / "data"), compression=None)],
                          tasks=1, workers=1, logging_dir=str(out / "l4")).run()
    kept = sum(1 for f in (out / "data").glob("*.jsonl") for _ in open(f))
    return time.perf_counter() - t0, kept


def _installed(name: str) -> bool:
    try:
        version(name)
        return True
    except PackageNotFoundError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=600)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="curate-bench-"))
    try:
        warc, jsonl, n, html_bytes = build_input(root, args.pages)
        warc_mb, text_mb = html_bytes / 1e6, jsonl.stat().st_size / 1e6  # MB of HTML payload / of text
        off = {"url_dedup": {"enabled": False}, "minhash": {"enabled": False}, "line_dedup": {"enabled": False}}
        rows = []
        for engine in ("resiliparse", "trafilatura"):
            seconds, stats = pasture_run([str(warc)], root / f"p-{engine}", extract={"engine": engine}, **off)
            rows.append((f"extract: pasture ({engine})", n, seconds, warc_mb, stats["stages"]["output"]["docs_out"]))
        seconds, stats = pasture_run([str(jsonl)], root / "p-minhash", url_dedup={"enabled": False},
                                     line_dedup={"enabled": False})
        rows.append(("minhash: pasture (4 phases)", n, seconds, text_mb, stats["stages"]["output"]["docs_out"]))
        gopher_only = {"kl": False, "max_dirty_words": None}
        filters_off = {name: {"enabled": False} for name in ("language", "safety", "domains")}
        for engine in ("resiliparse", "trafilatura"):
            seconds, stats = pasture_run([str(warc)], root / f"p-pipe-{engine}", extract={"engine": engine},
                                         heuristic={"enabled": True, **gopher_only}, **off, **filters_off)
            rows.append((f"pipeline: pasture ({engine} + Gopher filters)", n, seconds, warc_mb,
                         stats["stages"]["output"]["docs_out"]))
        try:
            import datatrove

            seconds = datatrove_extract(warc, root / "dt-extract")
            kept = sum(1 for f in (root / "dt-extract" / "data").glob("*.jsonl") for _ in open(f))
            rows.append((f"extract: datatrove {datatrove.__version__ if hasattr(datatrove, '__version__') else version('datatrove')} (trafilatura)",
                         n, seconds, warc_mb, kept))
            try:
                seconds, kept = datatrove_pipeline(warc, root / "dt-pipeline")
                rows.append(("pipeline: datatrove (trafilatura + Gopher filters, pasture's word splitting)", n, seconds,
                             warc_mb, kept))
            except Exception as e:
                print(f"datatrove pipeline failed: {type(e).__name__}: {e}")
            try:
                seconds, kept = datatrove_minhash(jsonl, root / "dt-minhash")
                rows.append(("minhash: datatrove (4 stages)", n, seconds, text_mb, kept))
            except Exception as e:  # report a broken datatrove install instead of losing the other numbers
                print(f"datatrove minhash failed: {type(e).__name__}: {e}")
                if "encoded before hashing" in str(e):
                    print(f"  xxhash {version('xxhash')} refuses str; datatrove needs xxhash<4 (see this file's docstring)")
        except ImportError as e:
            print(f"datatrove not importable ({e}); pasture only")
        print(f"input: {n} pages, {warc_mb:.2f} MB of HTML in a WARC.gz, extracted-text JSONL {text_mb:.2f} MB; 1 worker each")
        peers = ", ".join(f"{name} {version(name)}" for name in ("datatrove", "xxhash") if _installed(name))
        print(f"versions: resiliparse {version('resiliparse')}, trafilatura {version('trafilatura')}, "
              f"numpy {version('numpy')}, {peers}")
        print("| pipeline | docs | kept | seconds | docs/s/core | MB/s/core |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, docs, seconds, mb, kept in rows:
            print(f"| {name} | {docs} | {kept} | {seconds:.2f} | {docs / seconds:,.0f} | {mb / seconds:.2f} |")
        pairs = [("extract: pasture (trafilatura)", "extract: datatrove"), ("extract: pasture (resiliparse)", "extract: datatrove"),
                 ("pipeline: pasture (trafilatura", "pipeline: datatrove"),
                 ("pipeline: pasture (resiliparse", "pipeline: datatrove"), ("minhash: pasture", "minhash: datatrove")]
        for ours, theirs in pairs:
            a = [r for r in rows if r[0].startswith(ours)]
            b = [r for r in rows if r[0].startswith(theirs)]
            if a and b:
                print(f"speed ratio {a[0][0]} / {b[0][0]}: {b[0][2] / a[0][2]:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Gather text that is already on the machine, so a run needs no download.

Default roots: the Python standard library's source, the documentation that
installed packages ship (METADATA, README, .md/.rst/.txt, HTML), and where present
/usr/share/doc (plain, gzipped and HTML files), man pages, and Python's HTML docs.
Files are listed in sorted order, shuffled with a fixed seed and read until a byte
budget is met, and every root's file and byte counts are recorded, so a run can be
repeated exactly on the same machine.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pasture.data.extract import Extractor
from pasture.documents import Document, DocumentWriter, expand_inputs

TEXT_SUFFIXES = {".txt", ".md", ".rst"}
HTML_SUFFIXES = {".html", ".htm"}
MAX_FILE_BYTES = 2_000_000  # a generated table or a minified bundle says little; skip it


@dataclass
class Root:
    name: str
    path: Path
    kind: str  # python | package-docs | system-docs | man | html-docs


def default_roots() -> list[Root]:
    """The roots present on this machine, in a fixed order."""
    paths = sysconfig.get_paths()
    stdlib = Path(paths["stdlib"])
    site = Path(paths["purelib"])
    candidates = [
        Root("python-stdlib", stdlib, "python"),
        Root("site-packages-docs", site, "package-docs"),
        Root("usr-share-doc", Path("/usr/share/doc"), "system-docs"),
        Root("man-pages", Path("/usr/share/man"), "man"),
        Root("python-html-docs", Path("/usr/share/doc/python3-doc/html"), "html-docs"),
    ]
    return [r for r in candidates if r.path.is_dir()]


def _wanted(path: Path, root: Root) -> bool:
    name = path.name.lower()
    if root.kind == "python":
        return path.suffix == ".py" and "site-packages" not in path.parts
    if root.kind == "package-docs":
        if "dist-info" in path.parent.name:
            return name == "metadata"
        return path.suffix.lower() in TEXT_SUFFIXES | HTML_SUFFIXES or name.startswith("readme")
    if root.kind == "man":
        return name.endswith(".gz") and re.search(r"\.\d\w*\.gz$", name) is not None
    if root.kind == "html-docs":
        return path.suffix.lower() in HTML_SUFFIXES
    # system docs: readable text, plain or gzipped, and HTML
    base = name.removesuffix(".gz")
    return (Path(base).suffix in TEXT_SUFFIXES | HTML_SUFFIXES or base.startswith(("readme", "changelog", "copyright", "news")))


def _walk(root: Path) -> Iterator[Path]:
    """Files under `root` in sorted order, skipping caches and symlinked folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", ".git"))
        for name in sorted(filenames):
            yield Path(dirpath, name)


def list_files(roots: list[Root]) -> list[tuple[Root, Path]]:
    """Every wanted file under the roots, each once (the first root that holds it wins)."""
    seen: set[Path] = set()
    files = []
    skip_python_docs = any(r.kind == "html-docs" for r in roots)
    for root in roots:
        for path in _walk(root.path):
            if not _wanted(path, root):
                continue
            if root.kind == "system-docs" and skip_python_docs and any(
                    part.startswith("python3") and part.endswith("-doc") for part in path.parts):
                continue  # read once, through the html-docs root
            try:
                if path.is_symlink() or path.stat().st_size > MAX_FILE_BYTES:
                    continue
            except OSError:
                continue
            if path in seen:
                continue
            seen.add(path)
            files.append((root, path))
    return files


def shuffled_by_root(files: list[tuple[Root, Path]], seed: int) -> dict[str, list[Path]]:
    """Each root's files in an order shuffled with `seed`."""
    by_root: dict[str, list[Path]] = {}
    for root, path in files:
        by_root.setdefault(root.name, []).append(path)
    rng = random.Random(seed)
    for paths in by_root.values():
        rng.shuffle(paths)
    return by_root


_ROFF_ESCAPE = re.compile(r"\\f[BIRP]|\\f\(..|\\\(..|\\[&|^]|\\s[+-]?\d")


def man_to_text(roff: str) -> str:
    """Readable text from a man page's roff source: requests dropped, font escapes removed."""
    lines = []
    for line in roff.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith("."):
            parts = line.split(None, 1)
            if parts[0] in (".SH", ".SS") and len(parts) > 1:
                lines.append("\n" + parts[1].strip('"'))
            elif parts[0] in (".B", ".I", ".BR", ".IR", ".RB", ".BI", ".IB") and len(parts) > 1:
                lines.append(parts[1].replace('"', ""))
            elif parts[0] in (".PP", ".P", ".LP", ".TP", ".IP"):
                lines.append("")
            continue
        line = line.replace("\\-", "-").replace("\\e", "\\")
        lines.append(_ROFF_ESCAPE.sub("", line))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if b"\x00" in data[:4096]:
        raise ValueError("binary")
    return data.decode("utf-8", errors="replace")


def read_file(root: Root, path: Path, extractor) -> Document | None:
    """One document from one file, or None when it holds no usable text."""
    try:
        text = _read_text(path)
    except (OSError, ValueError, EOFError, gzip.BadGzipFile):
        return None
    base = path.name.lower().removesuffix(".gz")
    fmt = "text"
    if root.kind == "man":
        text, fmt = man_to_text(text), "man"
    elif Path(base).suffix in HTML_SUFFIXES:
        text, fmt = extractor(text), "html"
    elif root.kind == "python":
        fmt = "python"
    text = text.strip()
    if not text:
        return None
    doc_id = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    return Document(id=doc_id, text=text, url=path.resolve().as_uri(), source=root.name,
                    meta={"path": str(path), "format": fmt, "root_kind": root.kind})


def _html_extractor():
    """Main-content extraction from the curation pipeline, falling back to tag stripping."""
    try:
        extractor = Extractor()
        return lambda html: extractor.extract(html)[0] or ""
    except Exception:  # the extraction libraries are an optional extra
        tag = re.compile(r"<[^>]+>")
        return lambda html: tag.sub(" ", html)


def gather(roots: list[Root], out_dir: Path, max_bytes: int, seed: int = 0, progress: bool = True,
           shards: int = 4) -> dict:
    """Write up to `max_bytes` of text from `roots` into `shards` documents files (so later
    stages can work on them in parallel); returns what was read.

    The next file always comes from the root with the fewest bytes taken so far, so the
    budget is shared evenly between roots (a root that runs out leaves its share to the rest).
    """
    queues = shuffled_by_root(list_files(roots), seed)
    extractor = _html_extractor()
    per_root = {r.name: {"path": str(r.path), "kind": r.kind, "files_listed": len(queues.get(r.name, [])),
                         "documents": 0, "bytes": 0} for r in roots}
    by_name = {r.name: r for r in roots}
    total = 0
    writers = [DocumentWriter(Path(out_dir) / f"documents-{i:05d}.jsonl.zst") for i in range(shards)]
    with tqdm(total=max_bytes, unit="B", unit_scale=True, desc="gather", disable=not progress) as bar:
        while total < max_bytes:
            open_roots = [name for name, paths in queues.items() if paths]
            if not open_roots:
                break
            name = min(open_roots, key=lambda n: per_root[n]["bytes"])
            doc = read_file(by_name[name], queues[name].pop(0), extractor)
            if doc is None:
                continue
            size = len(doc.text.encode("utf-8"))
            writers[sum(w.count for w in writers) % shards].write(doc)
            total += size
            per_root[name]["documents"] += 1
            per_root[name]["bytes"] += size
            bar.update(min(size, max_bytes - bar.n))
    for w in writers:
        w.close()
    return {"roots": per_root, "documents": sum(w.count for w in writers), "bytes": total, "max_bytes": max_bytes,
            "seed": seed, "output": str(out_dir)}


def iter_source_files(patterns: list[str]) -> Iterator[Path]:
    """Files named by `--source` paths or globs, sorted."""
    yield from expand_inputs(patterns, suffixes=(".warc", ".warc.gz", ".html", ".htm", ".jsonl", ".jsonl.zst",
                                                  ".parquet", ".txt", ".md"))

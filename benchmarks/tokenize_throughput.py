"""Tokenization throughput: `pasture tokenize` against Meta's own Llama 3 tokenizer, on the same text.

Input: the Python standard library's sources as documents (real text, no download).
Prints tokens/s for Meta's `llama_models` Tokenizer (a plain encode loop, the way its
users call it), pasture's `Tokenizer.encode_batch`, and the whole `pasture tokenize`
stage (read, encode, write shards) with 1 and all workers, and checks that every
method produces the same token count.

    python benchmarks/tokenize_throughput.py [--max-mb 40]
"""

from __future__ import annotations

import argparse
import os
import sysconfig
import tempfile
import time
from pathlib import Path


def stdlib_documents(max_bytes: int) -> list[str]:
    texts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        text = path.read_text(errors="replace")
        if not text.strip():
            continue  # the tokenize stage skips (and counts) empty documents
        texts.append(text)
        total += len(text.encode())
        if total >= max_bytes:
            break
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-mb", type=float, default=40)
    args = parser.parse_args()

    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

    from pasture.documents import Document, write_documents
    from pasture.tokenizer import Tokenizer
    from pasture.train.tokenize import tokenize_documents

    texts = stdlib_documents(int(args.max_mb * 1e6))
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"{len(texts)} documents, {mb:.1f} MB, {os.cpu_count()} cores")
    rows = []

    meta = MetaTokenizer.get_instance()
    t0 = time.perf_counter()
    meta_tokens = sum(len(meta.encode(t, bos=True, eos=True)) for t in texts)
    rows.append(("Meta llama_models Tokenizer.encode loop", meta_tokens, time.perf_counter() - t0))

    ours = Tokenizer.load("llama3")
    t0 = time.perf_counter()
    batch_tokens = sum(len(ids) for ids in ours.encode_batch(texts, bos=True, eos=True))
    rows.append(("pasture Tokenizer.encode_batch", batch_tokens, time.perf_counter() - t0))

    with tempfile.TemporaryDirectory() as tmp:
        write_documents(Path(tmp) / "docs.jsonl", [Document(id=str(i), text=t) for i, t in enumerate(texts)])
        for workers in sorted({1, os.cpu_count() or 1}):
            t0 = time.perf_counter()
            stats = tokenize_documents(Path(tmp) / "docs.jsonl", "llama3", Path(tmp) / f"tok{workers}",
                                       workers=workers, progress=False)
            rows.append((f"pasture tokenize stage, {workers} worker(s), read+encode+write", stats["tokens"],
                         time.perf_counter() - t0))

    base = rows[0][1] / rows[0][2]
    print(f"| method | tokens | seconds | tokens/s | vs Meta |\n|---|---:|---:|---:|---:|")
    for name, tokens, seconds in rows:
        print(f"| {name} | {tokens:,} | {seconds:.2f} | {tokens / seconds:,.0f} | {tokens / seconds / base:.2f}x |")
    assert len({r[1] for r in rows}) == 1, "token counts differ between methods"
    print("token counts identical across methods")


if __name__ == "__main__":
    main()

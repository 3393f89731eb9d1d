"""`pasture tokenize`: documents in, token shards out (format in `shards.py`).

Documents stream from the readers in `pasture.documents`, are grouped into
batches, encoded on a process pool (each worker loads the tokenizer once) and written
in input order, so the output is byte-identical whatever the number of workers. At
most a few batches per worker are in flight, so memory stays bounded whatever the
input size.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from pasture.documents import expand_inputs, read_documents
from pasture.errors import PastureError
from pasture.tokenizer import Tokenizer, resolve_tokenizer_path
from pasture.train.shards import FORMAT, INDEX_FILE, SPLITS, VERSION, SplitWriter, write_index

if TYPE_CHECKING:
    from pasture.tokenizer import Tokenizer

DEFAULT_SHARD_TOKENS = 100_000_000
BATCH_DOCUMENTS = 256
BATCH_CHARS = 4 << 20  # a batch closes early on long documents, to bound memory
IN_FLIGHT_PER_WORKER = 2


class TokenizeError(PastureError):
    """Bad options for `pasture tokenize`, or a document whose tokens do not fit the vocabulary."""


def is_held_out(document_id: str, val_fraction: float) -> bool:
    """Whether a document goes to the `val` split: a hash of its id, so the choice is the
    same on every run, machine and worker count."""
    digest = hashlib.blake2b(document_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2**64


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# (document ids, texts) of one batch
Batch = tuple[list[str], list[str]]
# (all tokens of the batch back to back, tokens per document, UTF-8 bytes per document)
Encoded = tuple[np.ndarray, np.ndarray, list[int]]


def _encode(tokenizer: "Tokenizer", batch: Batch, bos: bool, eos: bool, vocab_size: int) -> Encoded:
    ids, texts = batch
    encoded = tokenizer.encode_batch(texts, bos=bos, eos=eos, num_threads=1)
    lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    tokens = np.fromiter(itertools.chain.from_iterable(encoded), np.int64, int(lengths.sum()))
    if tokens.size and (tokens.max() >= vocab_size or tokens.min() < 0):
        for doc_id, doc_tokens in zip(ids, encoded):
            bad = next((t for t in doc_tokens if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise TokenizeError(
                    f"document {doc_id!r}: token id {bad} is outside the vocabulary (size {vocab_size})"
                )
    text_bytes = [len(t.encode("utf-8", "replace")) for t in texts]
    return tokens.astype(np.uint32), lengths, text_bytes


_worker_tokenizer: "Tokenizer | None" = None


def _init_worker(tokenizer_path: str) -> None:
    """Pool initializer: load the tokenizer once per process, not once per batch."""
    global _worker_tokenizer

    _worker_tokenizer = Tokenizer.load(tokenizer_path)


def _encode_in_worker(batch: Batch, bos: bool, eos: bool, vocab_size: int) -> Encoded:
    return _encode(_worker_tokenizer, batch, bos, eos, vocab_size)


def _encode_in_order(
    batches: Iterable[Batch], tokenizer: "Tokenizer", tokenizer_path: Path, workers: int, bos: bool, eos: bool,
    vocab_size: int,
) -> Iterator[tuple[Batch, Encoded]]:
    """Encoded batches in input order: an ordered imap with a bounded window of batches in flight."""
    if workers == 1:
        for batch in batches:
            yield batch, _encode(tokenizer, batch, bos, eos, vocab_size)
        return
    # spawn: workers inherit no threads or locks from the parent; a worker that dies
    # (killed for memory) fails the run with BrokenProcessPool instead of hanging it
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, context, initializer=_init_worker, initargs=(str(tokenizer_path),)) as pool:
        pending: deque = deque()
        try:
            for batch in batches:
                pending.append((batch, pool.submit(_encode_in_worker, batch, bos, eos, vocab_size)))
                if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def _batches(paths: list[Path], counts: dict[str, int]) -> Iterator[Batch]:
    """Non-empty documents grouped into batches; empty ones are counted in `counts`."""
    ids: list[str] = []
    texts: list[str] = []
    chars = 0
    for path in paths:
        for doc in read_documents(path):
            if not doc.text.strip():
                counts["empty_documents"] += 1
                continue
            ids.append(doc.id)
            texts.append(doc.text)
            chars += len(doc.text)
            if len(ids) >= BATCH_DOCUMENTS or chars >= BATCH_CHARS:
                yield ids, texts
                ids, texts, chars = [], [], 0
    if ids:
        yield ids, texts


def _clear_output(out: Path, overwrite: bool) -> None:
    """Remove the index first (the folder stops looking complete), then old shards."""
    index_path = out / INDEX_FILE
    if index_path.exists() and not overwrite:
        raise TokenizeError(f"{out} already holds a token dataset; pass --overwrite to replace it")
    index_path.unlink(missing_ok=True)
    for split in SPLITS:
        for pattern in (f"{split}-[0-9]*.bin", f"{split}-[0-9]*.idx", f"{split}-[0-9]*.tmp"):
            for stale in out.glob(pattern):
                stale.unlink()


def tokenize_documents(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    tokenizer_spec: str | os.PathLike,
    out_dir: str | os.PathLike,
    workers: int | None = None,
    val_fraction: float = 0.0,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    bos: bool = True,
    eos: bool = True,
    vocab_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize documents into a token dataset folder; returns counts and throughput.

    Each document becomes BOS + text + EOS (either optional); empty documents are
    counted and skipped. `vocab_size` checks ids against a smaller vocabulary than the
    tokenizer's (a model with a smaller embedding). `index.json` is written last.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise TokenizeError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise TokenizeError(f"--shard-tokens must be positive, got {shard_tokens}")
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    if workers < 1:
        raise TokenizeError(f"--workers must be positive, got {workers}")
    input_list = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(i) for i in inputs]
    paths = expand_inputs(input_list)
    tokenizer_path = resolve_tokenizer_path(tokenizer_spec)
    tokenizer = Tokenizer.load(tokenizer_path)
    vocab_size = tokenizer.n_words if vocab_size is None else vocab_size
    if vocab_size < 1:
        raise TokenizeError(f"--vocab-size must be positive, got {vocab_size}")

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TokenizeError(f"--out {out} is a file; it must be a dataset folder")
    out.mkdir(parents=True, exist_ok=True)
    _clear_output(out, overwrite)
    writers = {split: SplitWriter(out, split, shard_tokens) for split in SPLITS}
    counts = {"empty_documents": 0}
    started = time.perf_counter()
    bar = tqdm(desc="tokenize", unit=" docs", disable=not progress, dynamic_ncols=True)
    batches = _batches(paths, counts)
    encoded_batches = _encode_in_order(batches, tokenizer, tokenizer_path, workers, bos, eos, vocab_size)
    try:
        for (ids, _), (tokens, lengths, text_bytes) in encoded_batches:
            ends = np.cumsum(lengths)
            for doc_id, end, length, n_bytes in zip(ids, ends.tolist(), lengths.tolist(), text_bytes):
                split = "val" if val_fraction and is_held_out(doc_id, val_fraction) else "train"
                writers[split].add(tokens[end - length : end], n_bytes)
            bar.update(len(ids))
            bar.set_postfix(tokens=f"{sum(w.tokens for w in writers.values()):,}", refresh=False)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        encoded_batches.close()  # stops the worker pool now, not when the traceback is freed
        bar.close()
    splits = {split: writer.finish() for split, writer in writers.items()}
    index = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": "uint32",
        "vocab_size": vocab_size,
        "tokenizer": {"path": str(tokenizer_path), "sha256": file_sha256(tokenizer_path)},
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "add_bos": bos,
        "add_eos": eos,
        "splits": splits,
        "source": input_list,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_index(out, index)
    seconds = time.perf_counter() - started
    tokens = sum(s["tokens"] for s in splits.values())
    return {
        "out_dir": str(out),
        "documents": sum(s["documents"] for s in splits.values()),
        "tokens": tokens,
        "empty_documents": counts["empty_documents"],
        "splits": {name: {k: s[k] for k in ("documents", "tokens", "bytes")} | {"shards": len(s["shards"])}
                   for name, s in splits.items()},
        "workers": workers,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
    }

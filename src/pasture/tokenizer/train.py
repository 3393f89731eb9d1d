"""Train a Llama 3 style byte-level BPE and write it as a tiktoken `tokenizer.model`.

The merges are learned by Hugging Face `tokenizers` (Rust, multi-threaded) with
Llama 3's pre-tokenizer regex. The tiktoken file ranks the 256 single bytes first
(rank = byte value), then each learned token in merge order; since tiktoken merges
by rank, that reproduces the trained segmentation, which `train_tokenizer` checks on
sample text. `vocab_size` counts these base ranks; the 256 special tokens follow.

Besides `tokenizer.model` the output folder gets `tokenizer_stats.json` with training and
compression statistics (held-out characters and bytes per token) for the report card.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer
from tqdm import tqdm

from pasture.documents import expand_inputs, iter_documents
from pasture.tokenizer.tokenizer import (
    LLAMA3_PATTERN,
    NUM_SPECIAL_TOKENS,
    Tokenizer,
    TokenizerError,
    write_bpe_ranks,
)

TRAIN_BATCH_BYTES = 1 << 20  # documents are handed to the Rust trainer in ~1 MB batches
SAMPLE_CHARS = 200_000  # text checked against the HF tokenizer's segmentation
STATS_FILE = "tokenizer_stats.json"
MODEL_FILE = "tokenizer.model"


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte, as `tokenizers`' ByteLevel uses.

    Printable Latin-1 bytes stand for themselves; the other 68 map to U+0100 onwards.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in alphabet):
        alphabet[b] = chr(256 + n)
    return alphabet


def build_hf_bpe_tokenizer():
    """An untrained `tokenizers` BPE with Llama 3's regex split and byte-level mapping."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    return hf


def ranked_tokens_from_hf(hf) -> list[bytes]:
    """Token bytes in rank order: the 256 bytes, then each merge's new token once, in merge order.

    The trainer may learn a pair whose concatenation is already a token; that token
    keeps its first (lower) rank.
    """
    to_byte = {ch: b for b, ch in byte_level_alphabet().items()}
    merges = json.loads(hf.to_str())["model"]["merges"]
    tokens = [bytes([b]) for b in range(256)]
    seen = set(tokens)
    for merge in merges:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        token = bytes(to_byte[ch] for ch in left + right)
        if token not in seen:
            seen.add(token)
            tokens.append(token)
    return tokens


def hf_token_bytes(hf) -> dict[int, bytes]:
    """HF vocabulary id -> the bytes that token stands for."""
    to_byte = {ch: b for b, ch in byte_level_alphabet().items()}
    return {i: bytes(to_byte[ch] for ch in token) for token, i in hf.get_vocab().items()}


def compare_segmentation(tokenizer: Tokenizer, hf, texts: list[str]) -> dict[str, int]:
    """How many texts our tokenizer splits into exactly the HF tokenizer's token bytes."""
    hf_bytes = hf_token_bytes(hf)
    hf_ids = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    ours = tokenizer.encode_batch(texts)
    identical = tokens = 0
    for theirs, mine in zip(hf_ids, ours):
        tokens += len(mine)
        identical += [hf_bytes[i] for i in theirs] == [tokenizer.token_bytes(i) for i in mine]
    return {"texts": len(texts), "identical": identical, "tokens": tokens}


def measure_compression(tokenizer: Tokenizer, texts: Iterable[str], batch_docs: int = 256) -> dict[str, Any]:
    """Documents, characters, UTF-8 bytes and tokens of `texts`, and the two ratios."""
    docs = chars = nbytes = tokens = 0

    def count(batch: list[str]) -> None:
        nonlocal tokens
        tokens += sum(len(ids) for ids in tokenizer.encode_batch(batch))

    batch: list[str] = []
    for text in texts:
        docs += 1
        chars += len(text)
        nbytes += len(text.encode("utf-8", errors="replace"))
        batch.append(text)
        if len(batch) >= batch_docs:
            count(batch)
            batch = []
    if batch:
        count(batch)
    return {
        "docs": docs,
        "chars": chars,
        "bytes": nbytes,
        "tokens": tokens,
        "chars_per_token": round(chars / tokens, 4) if tokens else None,
        "bytes_per_token": round(nbytes / tokens, 4) if tokens else None,
    }


def _is_heldout(index: int, period: int) -> bool:
    # every `period`-th document, starting with the second, so any corpus of 2+ documents holds one out
    return period > 0 and index % period == 1


def _input_size_estimate(inputs: Any, max_bytes: int | None) -> int | None:
    """Total for the progress bar: file sizes when they bound the text (no compressed files)."""
    paths = expand_inputs(inputs)
    if any(p.name.lower().endswith((".zst", ".gz", ".parquet")) for p in paths):
        return max_bytes
    total = sum(p.stat().st_size for p in paths)
    return min(total, max_bytes) if max_bytes else total


def train_tokenizer(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    vocab_size: int,
    out_dir: str | os.PathLike,
    *,
    max_bytes: int | None = None,
    holdout_fraction: float = 0.01,
    holdout_max_bytes: int = 10_000_000,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train a byte-level BPE with `vocab_size` base ranks on documents; write `out_dir`.

    `inputs` are documents files or folders (JSONL, Parquet, text; see
    `pasture.documents`). Every `1/holdout_fraction`-th document (up to
    `holdout_max_bytes`) is held out from training to measure compression;
    `max_bytes` caps the training text. Returns the statistics written to
    `out_dir/tokenizer_stats.json`.
    """
    if vocab_size < 257:
        raise TokenizerError(f"vocab size {vocab_size} is too small: the 256 single bytes alone take 256 ranks")
    if not 0 <= holdout_fraction < 1:
        raise TokenizerError(f"holdout fraction must be in [0, 1), got {holdout_fraction}")
    if max_bytes is not None and max_bytes <= 0:
        raise TokenizerError(f"max bytes must be positive, got {max_bytes}")

    started = time.time()
    out = Path(out_dir)
    period = round(1 / holdout_fraction) if holdout_fraction > 0 else 0
    heldout: list[str] = []
    heldout_bytes = 0
    train_sample: list[str] = []
    train_stats = {"docs": 0, "chars": 0, "bytes": 0}
    progress = tqdm(
        total=_input_size_estimate(inputs, max_bytes),
        unit="B",
        unit_scale=True,
        desc="tokenizer: reading",
        disable=not show_progress,
        file=sys.stderr,
    )

    def training_batches() -> Iterator[list[str]]:
        nonlocal heldout_bytes
        batch: list[str] = []
        batch_bytes = 0
        for index, doc in enumerate(iter_documents(inputs)):
            text = doc.text
            if not text:
                continue
            size = len(text.encode("utf-8", errors="replace"))
            progress.update(size)
            if _is_heldout(index, period) and heldout_bytes < holdout_max_bytes:
                heldout.append(text)
                heldout_bytes += size
                continue
            if max_bytes is not None and train_stats["bytes"] + size > max_bytes:
                room = max_bytes - train_stats["bytes"]
                text = text.encode("utf-8", errors="replace")[:room].decode("utf-8", errors="ignore")
                size = len(text.encode("utf-8"))
            if sum(map(len, train_sample)) < SAMPLE_CHARS:
                train_sample.append(text[:SAMPLE_CHARS])
            train_stats["docs"] += 1
            train_stats["chars"] += len(text)
            train_stats["bytes"] += size
            batch.append(text)
            batch_bytes += size
            if batch_bytes >= TRAIN_BATCH_BYTES:
                yield batch
                batch, batch_bytes = [], 0
            if max_bytes is not None and train_stats["bytes"] >= max_bytes:
                break
        if batch:
            yield batch

    hf = build_hf_bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    hf.train_from_iterator(training_batches(), trainer=trainer)
    progress.close()
    if train_stats["docs"] == 0:
        raise TokenizerError(f"no training text in {inputs}: every document is empty or held out")
    if show_progress:
        megabytes, seconds = train_stats["bytes"] / 1e6, time.time() - started
        print(f"tokenizer: learned merges on {megabytes:.1f} MB in {seconds:.0f}s", file=sys.stderr)

    tokens = ranked_tokens_from_hf(hf)
    write_bpe_ranks(tokens, out / MODEL_FILE)
    tokenizer = Tokenizer.load(out / MODEL_FILE)

    sample = heldout if heldout else train_sample
    sample_texts, chars = [], 0
    for text in sample:
        if chars >= SAMPLE_CHARS:
            break
        sample_texts.append(text[: SAMPLE_CHARS - chars])
        chars += len(sample_texts[-1])
    stats: dict[str, Any] = {
        "format": "tiktoken-bpe",
        "model_file": MODEL_FILE,
        "pattern": LLAMA3_PATTERN,
        "requested_base_tokens": vocab_size,
        "num_base_tokens": tokenizer.num_base_tokens,
        "num_special_tokens": NUM_SPECIAL_TOKENS,
        "vocab_size": tokenizer.vocab_size,
        "train": train_stats,
        "heldout": measure_compression(tokenizer, heldout) if heldout else None,
        "hf_segmentation_check": compare_segmentation(tokenizer, hf, sample_texts),
        "seconds": round(time.time() - started, 2),
    }
    if tokenizer.num_base_tokens < vocab_size:
        stats["note"] = (
            f"the corpus allowed only {tokenizer.num_base_tokens - 256} merges; "
            f"{vocab_size - tokenizer.num_base_tokens} fewer ranks than requested"
        )
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    return stats

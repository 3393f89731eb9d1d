"""General-purpose compressors as baselines for held-out bits per byte.

A language model's held-out bits per byte is a code length: an arithmetic coder driven
by the model would compress the documents to that size. So `xz -9e` and `zstd -19` on
the same documents are honest baselines. Each held-out document is compressed on its
own, in the compressors' own container formats as their command-line tools write them
(headers and checksums included), as the model scores each document on its own. The
dictionary of `zstd -19 -D` is trained on training documents only, and, like the
model's weights, is not counted in the compressed size.
"""

from __future__ import annotations

import lzma
from pathlib import Path
from typing import Iterator

import numpy as np
import zstandard

from pasture.tokenizer import Tokenizer
from pasture.train.shards import TokenDataset

ZSTD_LEVEL = 19
ZSTD_DICT_SIZE = 112_640  # the zstd command line's default --maxdict
DICT_TRAINING_BYTES = 100 * ZSTD_DICT_SIZE  # zstd's advice: about 100x the dictionary size of samples
# fastCover with fixed segment (k) and d-mer (d) sizes: 6 s on one core, where zstd's
# search over k and d takes minutes for the same compression (2.1445 vs 2.1459 bits/byte)
DICT_PARAMS = {"k": 256, "d": 8, "f": 20, "accel": 1}


def document_texts(dataset: TokenDataset, tokenizer: Tokenizer, limit_bytes: int | None = None) -> Iterator[bytes]:
    """The UTF-8 text of each document, decoded from its tokens without BOS/EOS (byte-level
    BPE decodes exactly); with `limit_bytes`, documents spread evenly over the split up to it."""
    table = [tokenizer.token_bytes(i) for i in range(tokenizer.n_words)]
    special = {tokenizer.bos_id, tokenizer.eos_id}
    order = range(dataset.num_documents)
    if limit_bytes is not None and dataset.bytes > limit_bytes:
        keep = max(1, round(dataset.num_documents * limit_bytes / dataset.bytes))
        order = np.linspace(0, dataset.num_documents - 1, keep).round().astype(int).tolist()
    for i in order:
        yield b"".join(table[t] for t in dataset.document(i).tolist() if t not in special)


def xz_bits(text: bytes) -> int:
    """Size of `xz -9e` output (the .xz container with its CRC64 check), in bits.

    The dictionary is cut to the document's size (as xz itself does for small inputs):
    no match can reach further back, so the output has the same size, and compressing
    one document no longer allocates -9e's 674 MiB of match-finder tables (40x faster).
    """
    lzma2 = {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": max(4096, len(text))}
    return 8 * len(lzma.compress(text, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, filters=[lzma2]))


def code_lengths(tokens_dir: str | Path, tokenizer_path: str | Path) -> dict[str, np.ndarray]:
    """Per held-out document: its UTF-8 bytes and its compressed size in bits under xz -9e,
    zstd -19 and zstd -19 with a dictionary trained on the training split."""
    tokenizer = Tokenizer.load(tokenizer_path)
    val = list(document_texts(TokenDataset(tokens_dir, "val"), tokenizer))
    samples = [t for t in document_texts(TokenDataset(tokens_dir, "train"), tokenizer, DICT_TRAINING_BYTES) if t]
    dictionary = zstandard.train_dictionary(ZSTD_DICT_SIZE, samples, level=ZSTD_LEVEL, **DICT_PARAMS)
    plain = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    with_dict = zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=dictionary, write_checksum=True)
    return {"bytes": np.array([len(t) for t in val]),
            "xz": np.array([xz_bits(t) for t in val]),
            "zstd": np.array([8 * len(plain.compress(t)) for t in val]),
            "zstd_dict": np.array([8 * len(with_dict.compress(t)) for t in val])}


def compressor_baselines(tokens_dir: str | Path, tokenizer_path: str | Path) -> dict[str, float]:
    """Bits per byte of xz -9e, zstd -19 and zstd -19 with a trained dictionary over the
    held-out documents, each compressed on its own; {} for an empty held-out split."""
    lengths = code_lengths(tokens_dir, tokenizer_path)
    total = int(lengths["bytes"].sum())
    if total == 0:
        return {}
    return {**{f"{name}_bpb": float(lengths[name].sum() / total) for name in ("xz", "zstd", "zstd_dict")},
            "val_documents": len(lengths["bytes"]), "largest_document_share": float(lengths["bytes"].max() / total)}

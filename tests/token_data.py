"""Synthetic token datasets with learnable structure, for the training tests."""

from pathlib import Path

import numpy as np

from pasture.train.shards import SplitWriter, write_index


def write_progressions(out: Path, vocab: int, train_docs: int, val_docs: int, max_len: int) -> Path:
    """Documents that are arithmetic progressions modulo the vocabulary (BOS ... EOS): a
    model can learn them quickly, so losses fall within a few steps."""
    rng = np.random.default_rng(0)
    index = {"format": "pasture-tokens", "version": 1, "dtype": "uint32", "vocab_size": vocab,
             "tokenizer": None, "bos_id": vocab - 2, "eos_id": vocab - 1, "splits": {}}
    for split, n in (("train", train_docs), ("val", val_docs)):
        writer = SplitWriter(out, split, 5_000)
        for _ in range(n):
            length, start, stride = int(rng.integers(10, max_len)), int(rng.integers(0, vocab - 6)), int(rng.integers(1, 4))
            body = (start + np.arange(length) * stride) % (vocab - 2)
            writer.add(np.concatenate([[vocab - 2], body, [vocab - 1]]).astype(np.uint32), text_bytes=3 * (length + 2))
        index["splits"][split] = writer.finish()
    write_index(out, index)
    return out

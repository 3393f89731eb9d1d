"""Token shards: the file format between `pasture tokenize` and pre-training.

A dataset folder holds, per split (`train`, `val`), numbered shard pairs

    train-00000.bin   uint32 little-endian token ids, documents back to back
    train-00000.idx   uint64 little-endian offsets: n_documents + 1 entries, first 0,
                      last the shard's token count; document i is bin[idx[i]:idx[i+1]]

and one `index.json` (format "pasture-tokens", version 1) naming the shards with their
document and token counts, the tokenizer (path + sha256), BOS/EOS ids and per-split
UTF-8 byte counts (for bits-per-byte). Every file is written under a `.tmp` name and
renamed into place; `index.json` is written last, so a folder without it is unfinished.
Shards close only between documents, so no document is ever split across two shards.
"""

from __future__ import annotations

import array
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pasture.errors import PastureError

FORMAT = "pasture-tokens"
VERSION = 1
INDEX_FILE = "index.json"
SPLITS = ("train", "val")
TOKEN_DTYPE = np.dtype("<u4")
OFFSET_DTYPE = np.dtype("<u8")


class TokenDatasetError(PastureError):
    """A token dataset folder that is missing, unfinished or damaged."""


class SplitWriter:
    """Appends documents to one split's shards, closing a shard only between documents.

    A shard closes at the first document boundary at or past `shard_tokens` tokens, so
    shards run slightly over the target rather than cutting a document in two.
    """

    def __init__(self, out_dir: str | Path, split: str, shard_tokens: int) -> None:
        if shard_tokens < 1:
            raise PastureError(f"shard size must be at least 1 token, got {shard_tokens}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.shard_tokens = shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.documents = 0
        self.tokens = 0
        self.bytes = 0
        self._file = None
        self._offsets = array.array("Q", [0])

    def _paths(self) -> tuple[Path, Path]:
        stem = f"{self.split}-{len(self.shards):05d}"
        return self.out_dir / f"{stem}.bin", self.out_dir / f"{stem}.idx"

    def add(self, tokens: np.ndarray, text_bytes: int) -> None:
        """Append one document's tokens (uint32) whose source text had `text_bytes` UTF-8 bytes."""
        if self._file is None:
            bin_path, _ = self._paths()
            self._file = open(bin_path.with_name(bin_path.name + ".tmp"), "wb")
        self._file.write(np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE).data)
        self._offsets.append(self._offsets[-1] + len(tokens))
        self.documents += 1
        self.tokens += len(tokens)
        self.bytes += int(text_bytes)
        if self._offsets[-1] >= self.shard_tokens:
            self._close_shard()

    def _close_shard(self) -> None:
        bin_path, idx_path = self._paths()
        self._file.close()
        self._file = None
        offsets = np.frombuffer(self._offsets, dtype=np.uint64).astype(OFFSET_DTYPE)
        idx_tmp = idx_path.with_name(idx_path.name + ".tmp")
        with open(idx_tmp, "wb") as f:
            f.write(offsets.data)
        os.replace(bin_path.with_name(bin_path.name + ".tmp"), bin_path)
        os.replace(idx_tmp, idx_path)
        self.shards.append(
            {
                "tokens_file": bin_path.name,
                "offsets_file": idx_path.name,
                "documents": len(offsets) - 1,
                "tokens": int(offsets[-1]),
            }
        )
        self._offsets = array.array("Q", [0])

    def finish(self) -> dict[str, Any]:
        """Close the last shard; returns this split's entry for `index.json`."""
        if self._file is not None:
            self._close_shard()
        return {"documents": self.documents, "tokens": self.tokens, "bytes": self.bytes, "shards": self.shards}

    def abort(self) -> None:
        """Drop the unfinished shard (on error); finished shards stay but no index names them."""
        if self._file is not None:
            self._file.close()
            self._file = None
            bin_path, _ = self._paths()
            bin_path.with_name(bin_path.name + ".tmp").unlink(missing_ok=True)


def write_index(out_dir: str | Path, index: dict[str, Any]) -> Path:
    """Write `index.json` atomically: the step that makes a dataset complete."""
    path = Path(out_dir) / INDEX_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_index(path: str | Path) -> dict[str, Any]:
    """Load and check a dataset's `index.json` (pass the folder or the file)."""
    path = Path(path)
    index_path = path / INDEX_FILE if path.is_dir() or not path.suffix else path
    if not index_path.exists():
        hint = " (an interrupted `pasture tokenize` leaves no index)" if index_path.parent.is_dir() else ""
        raise TokenDatasetError(f"{index_path}: no token dataset index{hint}")
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenDatasetError(f"{index_path}: corrupt index ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise TokenDatasetError(f"{index_path}: not a {FORMAT} index")
    if index.get("version") != VERSION:
        raise TokenDatasetError(f"{index_path}: unsupported version {index.get('version')!r} (this reads {VERSION})")
    if index.get("dtype") != "uint32":
        raise TokenDatasetError(f"{index_path}: unsupported dtype {index.get('dtype')!r}")
    if not isinstance(index.get("splits"), dict):
        raise TokenDatasetError(f"{index_path}: missing 'splits'")
    return index


class TokenDataset:
    """One split of a token dataset, memory-mapped: random access to any document.

    Opening checks every shard's file sizes against the index, so a truncated or
    mismatched shard fails here with its file name instead of mid-training.
    """

    def __init__(self, path: str | Path, split: str = "train") -> None:
        self.path = Path(path)
        if self.path.name == INDEX_FILE:
            self.path = self.path.parent
        self.split = split
        self.header = read_index(self.path)
        index_path = self.path / INDEX_FILE
        if split not in self.header["splits"]:
            known = ", ".join(self.header["splits"]) or "none"
            raise TokenDatasetError(f"{index_path}: no split {split!r} (splits: {known})")
        entry = self.header["splits"][split]
        self.vocab_size: int = int(self.header["vocab_size"])
        self.bos_id: int | None = self.header.get("bos_id")
        self.eos_id: int | None = self.header.get("eos_id")
        self.bytes: int = int(entry.get("bytes", 0))
        self._tokens: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        for shard in entry["shards"]:
            tokens, offsets = self._open_shard(shard)
            self._tokens.append(tokens)
            self._offsets.append(offsets)
        counts = [len(o) - 1 for o in self._offsets]
        self._first_document = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.num_documents = int(self._first_document[-1])
        self.num_tokens = int(sum(len(t) for t in self._tokens))
        if self.num_documents != entry["documents"] or self.num_tokens != entry["tokens"]:
            raise TokenDatasetError(
                f"{index_path}: split {split!r} lists {entry['documents']} documents / {entry['tokens']} tokens "
                f"but its shards hold {self.num_documents} / {self.num_tokens}"
            )

    def _open_shard(self, shard: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        bin_path = self.path / shard["tokens_file"]
        idx_path = self.path / shard["offsets_file"]
        for p in (bin_path, idx_path):
            if not p.exists():
                raise TokenDatasetError(f"{p}: shard file missing")
        n_docs, n_tokens = int(shard["documents"]), int(shard["tokens"])
        if os.path.getsize(idx_path) != (n_docs + 1) * OFFSET_DTYPE.itemsize:
            raise TokenDatasetError(
                f"{idx_path}: {os.path.getsize(idx_path)} bytes, expected {(n_docs + 1) * 8} "
                f"for {n_docs} documents"
            )
        if os.path.getsize(bin_path) != n_tokens * TOKEN_DTYPE.itemsize:
            raise TokenDatasetError(
                f"{bin_path}: {os.path.getsize(bin_path)} bytes, expected {n_tokens * 4} for {n_tokens} tokens"
            )
        offsets = np.fromfile(idx_path, dtype=OFFSET_DTYPE).astype(np.int64)
        if offsets[0] != 0 or offsets[-1] != n_tokens or np.any(np.diff(offsets) < 0):
            raise TokenDatasetError(f"{idx_path}: offsets do not run from 0 to {n_tokens} in order")
        tokens = np.memmap(bin_path, dtype=TOKEN_DTYPE, mode="r") if n_tokens else np.empty(0, TOKEN_DTYPE)
        return tokens, offsets

    def __len__(self) -> int:
        return self.num_documents

    def document(self, i: int) -> np.ndarray:
        """Tokens of document `i` (0-based across all shards), a read-only uint32 view."""
        if not 0 <= i < self.num_documents:
            raise IndexError(f"document {i} out of range (split {self.split!r} has {self.num_documents})")
        shard = int(np.searchsorted(self._first_document, i, side="right")) - 1
        local = i - int(self._first_document[shard])
        offsets = self._offsets[shard]
        return self._tokens[shard][offsets[local] : offsets[local + 1]]

    def document_lengths(self) -> np.ndarray:
        """Token count of every document, int64, in dataset order."""
        if not self._offsets:
            return np.empty(0, np.int64)
        return np.concatenate([np.diff(o) for o in self._offsets])

    def __repr__(self) -> str:
        return (
            f"TokenDataset({str(self.path)!r}, split={self.split!r}: "
            f"{self.num_documents} documents, {self.num_tokens} tokens)"
        )

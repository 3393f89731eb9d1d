"""The stateful packed loader: token shards in, fixed-length training rows out.

Each source dataset is read as one endless token stream: epoch e is all its documents
in a permutation seeded by (seed, source, e), back to back, and epoch e+1 follows with
no gap, so a row may straddle two epochs. Rows are cut contiguously: a row of length T
takes T stream tokens as inputs and the token after them as its last target, and the
next row starts at that token. Over an epoch every token is an input exactly once.

Lanes: with `lanes=L`, each epoch's stream is cut into L contiguous regions and
successive rows are read from successive lanes, each lane with its own cursor (a
lane that reaches its region's end continues in its region of the next epoch). Rows
of one batch then come from L far-apart places in the stream instead of the same few
documents, which matters when documents are long and batches small; every token is
still an input exactly once per epoch of its lane.

Rows of one step are dealt round robin over data-parallel ranks (rank r takes rows
r, r+W, r+2W, ... of the step), and with several sources each row's source is drawn
from a seeded RNG. Every rank computes the same draws and the same cursors, so the
loader state is the same on every rank: resuming works with any world size, and any
batch size or sequence length, without losing or repeating a token.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from pasture.errors import PastureError
from pasture.train.shards import TokenDataset

IGNORE_INDEX = -100
STATE_VERSION = 2


class LoaderError(PastureError):
    """A loader that cannot be built from its sources, or a state that does not fit it."""


class _TokenStream:
    """One dataset read as an endless stream of epochs, each a permutation of its documents."""

    def __init__(self, dataset: TokenDataset, seed: int, source_index: int, shuffle: bool = True) -> None:
        self.dataset = dataset
        self.lengths = dataset.document_lengths()
        self.tokens_per_epoch = int(self.lengths.sum())
        if self.tokens_per_epoch == 0:
            raise LoaderError(f"{dataset.path} split {dataset.split!r} has no tokens")
        self.seed = seed
        self.source_index = source_index
        self.shuffle = shuffle
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(document order, cumulative end offsets) of one epoch; the last two are cached."""
        if epoch not in self._epochs:
            n = len(self.lengths)
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.source_index, epoch]).permutation(n)
            else:
                order = np.arange(n)
            if len(self._epochs) >= 2:
                del self._epochs[min(self._epochs)]
            self._epochs[epoch] = (order, np.cumsum(self.lengths[order]))
        return self._epochs[epoch]

    def read(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """`count` stream tokens from `start` (int64) and, per token, a key unique to its
        document occurrence (epoch * documents + place in the epoch's order)."""
        tokens = np.empty(count, np.int64)
        keys = np.empty(count, np.int64)
        filled = 0
        position = start
        while filled < count:
            epoch, offset = divmod(position, self.tokens_per_epoch)
            order, ends = self._epoch(epoch)
            place = int(np.searchsorted(ends, offset, side="right"))
            doc = int(order[place])
            within = offset - (int(ends[place]) - int(self.lengths[doc]))
            take = min(int(self.lengths[doc]) - within, count - filled)
            tokens[filled : filled + take] = self.dataset.document(doc)[within : within + take]
            keys[filled : filled + take] = epoch * len(self.lengths) + place
            filled += take
            position += take
        return tokens, keys


def _pack_row(tokens: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, targets and per-row document ids from T+1 stream tokens.

    A target in another document than its input is IGNORE_INDEX, so no position learns
    to predict across a document boundary; ids count documents from 0 within the row.
    """
    inputs = tokens[:-1]
    same_document = keys[1:] == keys[:-1]
    targets = np.where(same_document, tokens[1:], IGNORE_INDEX)
    document_ids = np.concatenate([[0], np.cumsum(~same_document[:-1])])
    return inputs, targets, document_ids


def _batch(inputs: np.ndarray, targets: np.ndarray, document_ids: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": torch.from_numpy(inputs),
        "targets": torch.from_numpy(targets),
        "document_ids": torch.from_numpy(document_ids),
        **extra,
    }


class PackedLoader:
    """Packs shuffled documents into [batch, seq_len] rows with document boundaries.

    `sources` is one TokenDataset or a weighted mix [(dataset, weight), ...]. Batch
    size and sequence length are given per call, so ramps and sequence-length stages
    need no new loader. `state_dict()` is plain ints/lists (JSON- and torch-saveable).
    """

    def __init__(
        self,
        sources: Sequence[tuple[TokenDataset, float]] | TokenDataset,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        lanes: int = 1,
    ) -> None:
        if isinstance(sources, TokenDataset):
            sources = [(sources, 1.0)]
        if not sources:
            raise LoaderError("the loader needs at least one source")
        weights = [float(w) for _, w in sources]
        if any(not math.isfinite(w) or w <= 0 for w in weights):
            raise LoaderError(f"source weights must be positive numbers, got {weights}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise LoaderError(f"rank {rank} is not in a world of size {world_size}")
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.weights = np.array(weights) / sum(weights)
        self._streams = [_TokenStream(ds, self.seed, i) for i, (ds, _) in enumerate(sources)]
        smallest = min(s.tokens_per_epoch for s in self._streams)
        if not 1 <= lanes <= smallest:
            raise LoaderError(f"lanes must be between 1 and the smallest source's {smallest} tokens, got {lanes}")
        self.lanes = lanes
        self._cursors = [[0] * lanes for _ in self._streams]  # tokens consumed per lane, across epochs
        self._rows = [0] * len(self._streams)  # rows taken per source: row k reads lane k % lanes
        self._rng = np.random.default_rng(self.seed)

    def _lane_span(self, source: int, lane: int) -> tuple[int, int]:
        """(start offset, length) of a lane's region within every epoch of a source."""
        n = self._streams[source].tokens_per_epoch
        start = lane * n // self.lanes
        return start, (lane + 1) * n // self.lanes - start

    def _read_lane(self, source: int, lane: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """`count` tokens of a lane from its cursor, continuing into the next epoch's region."""
        stream = self._streams[source]
        start, length = self._lane_span(source, lane)
        cursor = self._cursors[source][lane]
        pieces = []
        while count > 0:
            epoch, offset = divmod(cursor, length)
            take = min(length - offset, count)
            pieces.append(stream.read(epoch * stream.tokens_per_epoch + start + offset, take))
            cursor += take
            count -= take
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])

    def _epochs(self) -> list[int]:
        """Per source, the epoch every lane has reached (the slowest lane's)."""
        return [min(c // self._lane_span(i, lane)[1] for lane, c in enumerate(cursors))
                for i, cursors in enumerate(self._cursors)]

    def next_batch(self, batch_size: int, seq_len: int) -> dict[str, Any]:
        """This rank's next `batch_size` rows of `seq_len` tokens.

        Returns int64 tensors `inputs`, `targets` (next token, IGNORE_INDEX across a
        document boundary) and `document_ids` [B, T], plus `epoch` (the first source's
        epoch at the start of the batch) and `epochs` (every source's).
        """
        if batch_size < 1 or seq_len < 1:
            raise LoaderError(f"batch size and sequence length must be positive, got {batch_size} and {seq_len}")
        epochs = self._epochs()
        global_rows = batch_size * self.world_size
        if len(self._streams) > 1:
            row_sources = self._rng.choice(len(self._streams), size=global_rows, p=self.weights)
        else:
            row_sources = np.zeros(global_rows, np.int64)
        inputs = np.empty((batch_size, seq_len), np.int64)
        targets = np.empty((batch_size, seq_len), np.int64)
        document_ids = np.empty((batch_size, seq_len), np.int64)
        for row, source in enumerate(row_sources.tolist()):
            lane = self._rows[source] % self.lanes
            self._rows[source] += 1
            if row % self.world_size == self.rank:
                mine = row // self.world_size
                tokens, keys = self._read_lane(source, lane, seq_len + 1)
                inputs[mine], targets[mine], document_ids[mine] = _pack_row(tokens, keys)
            self._cursors[source][lane] += seq_len
        return _batch(inputs, targets, document_ids, epoch=epochs[0], epochs=epochs)

    def state_dict(self) -> dict[str, Any]:
        """Exact position: per-source lane cursors and row counts, and the source-draw RNG
        (the same on every rank)."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "lanes": self.lanes,
            "cursors": [list(c) for c in self._cursors],
            "rows": list(self._rows),
            "tokens_per_epoch": [s.tokens_per_epoch for s in self._streams],
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state` was taken (any rank, any world size)."""
        if state.get("version") != STATE_VERSION:
            raise LoaderError(f"loader state version {state.get('version')!r}, expected {STATE_VERSION}")
        if state["seed"] != self.seed:
            raise LoaderError(f"loader state was taken with seed {state['seed']}, this loader has seed {self.seed}")
        sizes = [s.tokens_per_epoch for s in self._streams]
        if list(state["tokens_per_epoch"]) != sizes:
            raise LoaderError(
                f"loader state is for sources of {list(state['tokens_per_epoch'])} tokens, "
                f"these hold {sizes}: the data changed"
            )
        if state["lanes"] != self.lanes:
            raise LoaderError(f"loader state was taken with {state['lanes']} lanes, this loader has {self.lanes}")
        self._cursors = [[int(c) for c in cursors] for cursors in state["cursors"]]
        self._rows = [int(r) for r in state["rows"]]
        self._rng.bit_generator.state = state["rng"]


class ValidationLoader:
    """Fixed held-out batches: the split's documents in stored order, packed once, no wrap.

    Every token but the first is a target exactly once over a full pass; the last row is
    padded (inputs 0, targets IGNORE_INDEX) and the last batch may have fewer rows.
    With `stride` < `seq_len`, rows overlap (a sliding window): each row scores `stride`
    targets after up to `seq_len - stride` tokens of context that the previous rows
    scored, so no target is predicted from a row's first few positions unless its
    document starts there.
    `bytes` is the UTF-8 size of the text the batches cover, for bits-per-byte =
    summed nats / ln 2 / bytes: exact over the whole split, and with `max_batches`
    cutting the pass short, the split's bytes scaled by the share of targets covered.
    """

    def __init__(self, dataset: TokenDataset, batch_size: int, seq_len: int, max_batches: int | None = None,
                 stride: int | None = None) -> None:
        if batch_size < 1 or seq_len < 1:
            raise LoaderError(f"batch size and sequence length must be positive, got {batch_size} and {seq_len}")
        stride = seq_len if stride is None else stride
        if not 1 <= stride <= seq_len:
            raise LoaderError(f"the validation stride must be between 1 and the sequence length {seq_len}, got {stride}")
        if dataset.num_tokens < 2:
            raise LoaderError(
                f"{dataset.path} split {dataset.split!r} has {dataset.num_tokens} tokens; "
                "hold out validation documents with `pasture tokenize --val-fraction`"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.stride = stride
        self._stream = _TokenStream(dataset, seed=0, source_index=0, shuffle=False)
        total_targets = dataset.num_tokens - 1
        rows = -(-total_targets // stride)
        batches = -(-rows // batch_size)
        self.num_batches = batches if max_batches is None else min(batches, max_batches)
        self.num_targets = min(total_targets, self.num_batches * batch_size * stride)
        if self.num_targets == total_targets:
            self.bytes = dataset.bytes
        else:
            self.bytes = round(dataset.bytes * self.num_targets / total_targets)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        last_target = self.num_targets  # stream index of the last target, inclusive
        context = self.seq_len - self.stride
        scored_start = 0  # stream index of the first input whose target this row scores
        for _ in range(self.num_batches):
            n_rows = min(self.batch_size, -(-(last_target - scored_start) // self.stride))
            inputs = np.zeros((n_rows, self.seq_len), np.int64)
            targets = np.full((n_rows, self.seq_len), IGNORE_INDEX, np.int64)
            document_ids = np.zeros((n_rows, self.seq_len), np.int64)
            for row in range(n_rows):
                row_start = max(0, scored_start - context)
                scored_end = min(scored_start + self.stride, last_target)
                length = scored_end - row_start
                tokens, keys = self._stream.read(row_start, length + 1)
                row_inputs, row_targets, row_ids = _pack_row(tokens, keys)
                row_targets[: scored_start - row_start] = IGNORE_INDEX  # context: scored by an earlier row
                inputs[row, :length] = row_inputs
                targets[row, :length] = row_targets
                document_ids[row, :length] = row_ids
                document_ids[row, length:] = row_ids[-1] + 1
                scored_start = scored_end
            yield _batch(inputs, targets, document_ids)

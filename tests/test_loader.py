"""PackedLoader and ValidationLoader on synthetic token datasets.

Every token in these datasets is unique (a running counter), so a token names its
(document, position) pair and the tests can check coverage as plain multisets.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pasture.errors import PastureError
from pasture.train.loader import IGNORE_INDEX, LoaderError, PackedLoader, ValidationLoader
from pasture.train.shards import FORMAT, SplitWriter, TokenDataset, write_index

LENGTHS = [5, 17, 1, 9, 30, 2, 11, 7, 4, 14]  # 100 tokens in 10 documents


def make_dataset(folder, lengths, first_token=0, shard_tokens=25, split="train") -> TokenDataset:
    """A dataset whose tokens are first_token, first_token+1, ... in document order."""
    writer = SplitWriter(folder, split, shard_tokens)
    token = first_token
    for length in lengths:
        writer.add(np.arange(token, token + length, dtype=np.uint32), text_bytes=3 * length)
        token += length
    write_index(folder, {
        "format": FORMAT, "version": 1, "dtype": "uint32", "vocab_size": 2**31, "bos_id": None, "eos_id": None,
        "splits": {split: writer.finish()},
    })
    return TokenDataset(folder, split)


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path, LENGTHS)


def document_starts(lengths, first_token=0) -> set[int]:
    return set((first_token + np.concatenate([[0], np.cumsum(lengths)[:-1]])).tolist())


def stream_of(batches) -> np.ndarray:
    """Rows in order, flattened: the stream a single-rank loader walked."""
    return np.concatenate([b["inputs"].numpy().ravel() for b in batches])


def test_dataset_has_shards_and_documents(dataset):
    assert dataset.num_documents == 10 and dataset.num_tokens == 100
    shards = dataset.header["splits"]["train"]["shards"]
    # a shard closes at the first document end at or past 25 tokens
    assert [(s["documents"], s["tokens"]) for s in shards] == [(4, 32), (1, 30), (5, 38)]
    assert dataset.document(4).tolist() == list(range(32, 62))
    assert dataset.document(9).tolist() == list(range(86, 100))
    assert dataset.document_lengths().tolist() == LENGTHS


def test_one_epoch_every_token_once(dataset):
    loader = PackedLoader(dataset, seed=3)
    batches = [loader.next_batch(2, 10) for _ in range(5)]  # 5 * 2 * 10 = 100 tokens = one epoch
    assert sorted(stream_of(batches).tolist()) == list(range(100))
    assert [b["epoch"] for b in batches] == [0] * 5
    assert loader.next_batch(1, 4)["epoch"] == 1


def test_epochs_carry_over_without_loss_or_repeat(dataset):
    loader = PackedLoader(dataset, seed=0)
    batches = [loader.next_batch(3, 7) for _ in range(17)]  # 357 tokens: rows straddle epoch ends
    stream = stream_of(batches)
    epochs = [stream[i : i + 100] for i in range(0, 300, 100)]
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(100))
    assert len(set(stream[300:].tolist())) == 57
    assert not np.array_equal(epochs[0], epochs[1])  # each epoch has its own order
    # documents stay whole and in order inside an epoch
    starts = document_starts(LENGTHS)
    for epoch in epochs:
        for i in range(1, 100):
            if epoch[i] not in starts:
                assert epoch[i] == epoch[i - 1] + 1


def test_targets_and_document_ids_follow_boundaries(dataset):
    loader = PackedLoader(dataset, seed=1)
    batches = [loader.next_batch(2, 9) for _ in range(12)]
    stream = stream_of(batches)
    starts = document_starts(LENGTHS)
    position = 0
    for batch in batches:
        for inputs, targets, ids in zip(batch["inputs"].tolist(), batch["targets"].tolist(),
                                        batch["document_ids"].tolist()):
            for t in range(len(inputs)):
                following = int(stream[position + t + 1]) if position + t + 1 < len(stream) else None
                if following is None:
                    continue
                if following in starts:
                    assert targets[t] == IGNORE_INDEX
                else:
                    assert targets[t] == following == inputs[t] + 1
            expected_ids = np.concatenate([[0], np.cumsum([x in starts for x in inputs[1:]])])
            assert ids == expected_ids.tolist()
            position += len(inputs)
    assert batches[0]["inputs"].dtype == batches[0]["targets"].dtype == batches[0]["document_ids"].dtype
    assert str(batches[0]["inputs"].dtype) == "torch.int64"
    masked = sum(int((b["targets"] == IGNORE_INDEX).sum()) for b in batches)
    assert masked > 0


def test_same_seed_same_batches_other_seed_differs(dataset):
    a, b, c = PackedLoader(dataset, 7), PackedLoader(dataset, 7), PackedLoader(dataset, 8)
    for _ in range(4):
        x, y, z = a.next_batch(2, 8), b.next_batch(2, 8), c.next_batch(2, 8)
        assert x["inputs"].equal(y["inputs"]) and x["targets"].equal(y["targets"])
    assert not x["inputs"].equal(z["inputs"])


@pytest.mark.parametrize("resume_after", [0, 1, 5, 13])
def test_resume_gives_identical_batches_across_shape_changes(dataset, resume_after):
    shapes = [(2, 8), (1, 16), (4, 3), (3, 11)] * 5
    loader = PackedLoader(dataset, seed=11)
    for batch_size, seq_len in shapes[:resume_after]:
        loader.next_batch(batch_size, seq_len)
    state = json.loads(json.dumps(loader.state_dict()))
    expected = [loader.next_batch(b, t) for b, t in shapes[resume_after:]]
    resumed = PackedLoader(dataset, seed=11)
    resumed.load_state_dict(state)
    for (b, t), want in zip(shapes[resume_after:], expected):
        got = resumed.next_batch(b, t)
        for key in ("inputs", "targets", "document_ids"):
            assert got[key].equal(want[key])
        assert got["epoch"] == want["epoch"]


def test_ranks_are_disjoint_and_cover_the_global_stream(dataset):
    single = PackedLoader(dataset, seed=5)
    ranks = [PackedLoader(dataset, seed=5, rank=r, world_size=2) for r in range(2)]
    rank_inputs = [[], []]
    for _ in range(5):
        reference = single.next_batch(4, 5)["inputs"]
        parts = [loader.next_batch(2, 5)["inputs"] for loader in ranks]
        for r in range(2):
            assert parts[r].equal(reference[r::2])  # rank r takes rows r, r+2, ...
            rank_inputs[r].extend(parts[r].ravel().tolist())
    assert not set(rank_inputs[0]) & set(rank_inputs[1])  # 50 tokens each, half an epoch
    assert sorted(rank_inputs[0] + rank_inputs[1]) == list(range(100))
    # the state is the same on every rank, so it resumes on another world size
    state = ranks[1].state_dict()
    assert state == ranks[0].state_dict()
    one_rank = PackedLoader(dataset, seed=5)
    one_rank.load_state_dict(state)
    assert one_rank.next_batch(4, 5)["inputs"].equal(single.next_batch(4, 5)["inputs"])


def test_weighted_sources_follow_weights_and_resume(tmp_path):
    web = make_dataset(tmp_path / "web", LENGTHS)
    code = make_dataset(tmp_path / "code", [8, 3, 12, 6], first_token=10_000)
    loader = PackedLoader([(web, 3.0), (code, 1.0)], seed=2)
    rows = [loader.next_batch(8, 6)["inputs"] for _ in range(50)]
    flat = np.concatenate([r.numpy() for r in rows])
    from_web = flat[:, 0] < 10_000
    assert 0.70 < from_web.mean() < 0.80  # 400 rows drawn at 3:1
    # each source keeps its own cursor: its rows, in order, are its single-source stream
    web_alone = PackedLoader(web, seed=2)
    assert np.array_equal(flat[from_web], np.concatenate([web_alone.next_batch(1, 6)["inputs"].numpy()
                                                          for _ in range(int(from_web.sum()))]))
    code_stream = flat[~from_web].ravel() - 10_000
    assert sorted(code_stream[:29].tolist()) == list(range(29))  # one epoch of the 29-token source
    # resume mid-mix
    state = json.loads(json.dumps(loader.state_dict()))
    want = [loader.next_batch(5, 4) for _ in range(6)]
    resumed = PackedLoader([(web, 3.0), (code, 1.0)], seed=2)
    resumed.load_state_dict(state)
    for expected in want:
        got = resumed.next_batch(5, 4)
        assert got["inputs"].equal(expected["inputs"]) and got["epochs"] == expected["epochs"]


def test_state_that_does_not_fit_is_rejected(tmp_path, dataset):
    state = PackedLoader(dataset, seed=1).state_dict()
    with pytest.raises(LoaderError, match="seed 1"):
        PackedLoader(dataset, seed=2).load_state_dict(state)
    other = make_dataset(tmp_path / "other", LENGTHS[:-1])
    with pytest.raises(LoaderError, match="data changed"):
        PackedLoader(other, seed=1).load_state_dict(state)
    with pytest.raises(LoaderError, match="rank 2"):
        PackedLoader(dataset, seed=1, rank=2, world_size=2)
    with pytest.raises(LoaderError, match="positive"):
        PackedLoader([(dataset, 0.0)], seed=1)


def test_validation_batches_cover_the_split_once(tmp_path):
    val = make_dataset(tmp_path, LENGTHS, split="val")
    loader = ValidationLoader(val, batch_size=3, seq_len=8)
    batches = list(loader)
    assert len(batches) == len(loader) == 5  # 99 targets -> 13 rows -> 5 batches (3,3,3,3,1)
    assert [b["inputs"].shape[0] for b in batches] == [3, 3, 3, 3, 1]
    inputs = np.concatenate([b["inputs"].numpy().ravel() for b in batches])
    targets = np.concatenate([b["targets"].numpy().ravel() for b in batches])
    assert inputs[:99].tolist() == list(range(99))  # stored order, no shuffle
    assert (targets[99:] == IGNORE_INDEX).all()  # padding of the last row
    starts = document_starts(LENGTHS)
    expected_targets = [IGNORE_INDEX if t in starts else t for t in range(1, 100)]
    assert targets[:99].tolist() == expected_targets
    assert loader.num_targets == 99 and loader.bytes == 300
    assert [b["inputs"].tolist() for b in ValidationLoader(val, 3, 8)] == [b["inputs"].tolist() for b in batches]
    short = ValidationLoader(val, batch_size=3, seq_len=8, max_batches=2)
    assert len(list(short)) == 2 and short.num_targets == 48 and short.bytes == round(300 * 48 / 99)


def test_sliding_validation_scores_each_target_once_after_its_context(tmp_path):
    """stride 3, seq_len 8: row k holds tokens from 3k - 5 and scores only its last 3 targets."""
    val = make_dataset(tmp_path, LENGTHS, split="val")
    loader = ValidationLoader(val, batch_size=4, seq_len=8, stride=3)
    rows = [(inputs, targets) for b in loader for inputs, targets in zip(b["inputs"].tolist(), b["targets"].tolist())]
    assert len(rows) == 33 and len(loader) == 9 and loader.num_targets == 99 and loader.bytes == 300  # 99 / 3
    scored = {}
    for k, (inputs, targets) in enumerate(rows):
        start = max(0, 3 * k - 5)
        length = min(3 * k + 3, 99) - start
        assert inputs[:length] == list(range(start, start + length))
        for position, target in enumerate(targets):
            if target != IGNORE_INDEX:
                assert start + position >= 3 * k  # the first positions are context only
                scored[start + position] = target
    starts = document_starts(LENGTHS)
    assert scored == {t - 1: t for t in range(1, 100) if t not in starts}  # every in-document target, once
    with pytest.raises(PastureError, match="stride"):
        ValidationLoader(val, batch_size=4, seq_len=8, stride=9)


def test_empty_split_is_a_clear_error(tmp_path):
    empty = make_dataset(tmp_path, [], split="val")
    assert empty.num_documents == 0
    with pytest.raises(PastureError, match="no tokens"):
        PackedLoader(empty, seed=0)
    with pytest.raises(PastureError, match="--val-fraction"):
        ValidationLoader(empty, 2, 4)


def test_lanes_spread_a_batch_and_cover_each_epoch_once(dataset):
    loader = PackedLoader(dataset, seed=2, lanes=4)  # lanes of 25 tokens each epoch
    first = loader.next_batch(4, 5)
    # the 4 rows of one batch start in 4 different quarters of the epoch's stream
    plain = PackedLoader(dataset, seed=2).next_batch(4, 5)
    assert sorted(first["inputs"][:, 0].tolist()) != sorted(plain["inputs"][:, 0].tolist())
    batches = [first] + [loader.next_batch(4, 5) for _ in range(4)]  # each lane: 25 tokens = its region
    assert sorted(stream_of(batches).tolist()) == list(range(100))
    assert loader.next_batch(4, 5)["epoch"] == 1
    more = [loader.next_batch(2, 7) for _ in range(30)]  # lanes cross epochs mid-row
    second_epoch = [t for b in more for t in b["inputs"].ravel().tolist()]
    assert len(second_epoch) == 420 and max(np.bincount(second_epoch)) <= 5


def test_lanes_resume_exactly_and_reject_a_different_lane_count(dataset):
    loader = PackedLoader(dataset, seed=4, lanes=3)
    for shape in [(2, 6), (3, 4), (1, 9)]:
        loader.next_batch(*shape)
    state = json.loads(json.dumps(loader.state_dict()))
    resumed = PackedLoader(dataset, seed=4, lanes=3)
    resumed.load_state_dict(state)
    for _ in range(6):
        a, b = loader.next_batch(2, 7), resumed.next_batch(2, 7)
        assert a["inputs"].equal(b["inputs"]) and a["targets"].equal(b["targets"])
    with pytest.raises(LoaderError, match="lanes"):
        PackedLoader(dataset, seed=4, lanes=2).load_state_dict(state)
    with pytest.raises(LoaderError, match="lanes"):
        PackedLoader(dataset, seed=4, lanes=1000)

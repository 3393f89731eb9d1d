"""`pasture tokenize` with Meta's Llama 3 tokenizer, and the token shard reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pasture.cli import main
from pasture.documents import DocumentError, write_documents
from pasture.tokenizer import Tokenizer
from pasture.train.shards import INDEX_FILE, TokenDataset, TokenDatasetError
from pasture.train.tokenize import TokenizeError, is_held_out, tokenize_documents

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pasture grows Llama models. " * 12,
    "日本語のテキストと emoji 🦙 mixed in.",
    "def f(x):\n    return x * 2\n",
    "<|begin_of_text|> is plain text here, not a special token",
    "",  # empty: counted and skipped
    "short",
    "Numbers 1234567890 and symbols #$%^&*() repeated. " * 5,
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load("llama3")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The same documents split over JSONL, JSONL.zst and Parquet; returns (folder, docs in read order)."""
    folder = tmp_path_factory.mktemp("docs")
    docs = [{"id": f"doc-{i:03d}", "text": TEXTS[i % len(TEXTS)] + (f" #{i}" if TEXTS[i % len(TEXTS)] else "")}
            for i in range(60)]
    write_documents(folder / "a.jsonl", docs[:20])
    write_documents(folder / "b.jsonl.zst", docs[20:40])
    write_documents(folder / "c.parquet", docs[40:])
    return folder, docs


def non_empty(docs):
    return [d for d in docs if d["text"].strip()]


def test_every_document_lands_once_and_decodes(tmp_path, corpus, tokenizer):
    folder, docs = corpus
    stats = tokenize_documents([folder], "llama3", tmp_path / "ds", workers=1, shard_tokens=100, progress=False)
    kept = non_empty(docs)
    encodings = [tokenizer.encode(d["text"]) for d in kept]
    assert stats["empty_documents"] == len(docs) - len(kept) == 7
    assert stats["documents"] == len(kept) == 53
    assert stats["tokens"] == sum(len(e) + 2 for e in encodings)
    ds = TokenDataset(tmp_path / "ds")
    assert ds.num_documents == 53 and ds.num_tokens == stats["tokens"]
    assert ds.bytes == sum(len(d["text"].encode()) for d in kept)
    for i, (doc, ids) in enumerate(zip(kept, encodings)):
        tokens = ds.document(i).tolist()
        assert tokens == [tokenizer.bos_id, *ids, tokenizer.eos_id]
        assert tokenizer.decode(tokens[1:-1]) == doc["text"]
    header = ds.header
    assert header["vocab_size"] == tokenizer.n_words == 128256
    assert (header["bos_id"], header["eos_id"]) == (128000, 128001)
    assert len(header["tokenizer"]["sha256"]) == 64
    # shards close only between documents, at the first document end at or past 100 tokens
    shards = header["splits"]["train"]["shards"]
    assert len(shards) > 3
    lengths = iter(len(e) + 2 for e in encodings)
    for shard in shards:
        doc_lengths = [next(lengths) for _ in range(shard["documents"])]
        assert sum(doc_lengths) == shard["tokens"]
        offsets = np.fromfile(tmp_path / "ds" / shard["offsets_file"], dtype="<u8")
        assert offsets.tolist() == [0, *np.cumsum(doc_lengths).tolist()]
        if shard is not shards[-1]:
            assert shard["tokens"] >= 100 > shard["tokens"] - doc_lengths[-1]
    assert next(lengths, None) is None


def test_no_bos_no_eos(tmp_path, corpus, tokenizer):
    folder, docs = corpus
    stats = tokenize_documents([folder / "a.jsonl"], "llama3", tmp_path / "ds", workers=1, bos=False, eos=False,
                               progress=False)
    ds = TokenDataset(tmp_path / "ds")
    assert stats["tokens"] == sum(len(tokenizer.encode(d["text"])) for d in non_empty(docs[:20]))
    assert ds.document(0).tolist() == tokenizer.encode(docs[0]["text"])


def test_parallel_output_is_byte_identical(tmp_path, corpus):
    folder, _ = corpus
    for workers in (1, 2):
        tokenize_documents([folder], "llama3", tmp_path / f"w{workers}", workers=workers, val_fraction=0.2,
                           shard_tokens=150, progress=False)
    files = sorted(p.name for p in (tmp_path / "w1").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "w2").iterdir())
    for name in files:
        if name != INDEX_FILE:
            assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name
    one, two = (json.loads((tmp_path / w / INDEX_FILE).read_text()) for w in ("w1", "w2"))
    one.pop("created"), two.pop("created")
    assert one == two


def test_val_split_is_deterministic_by_document_id(tmp_path, corpus, tokenizer):
    folder, docs = corpus
    for run in ("a", "b"):
        tokenize_documents([folder], "llama3", tmp_path / run, workers=1, val_fraction=0.25, progress=False)
    kept = non_empty(docs)
    held_out = [d for d in kept if is_held_out(d["id"], 0.25)]
    assert 5 <= len(held_out) <= 25
    val, train = TokenDataset(tmp_path / "a", "val"), TokenDataset(tmp_path / "a", "train")
    assert val.num_documents == len(held_out) and train.num_documents == len(kept) - len(held_out)
    for i, doc in enumerate(held_out):
        assert tokenizer.decode(val.document(i).tolist()[1:-1]) == doc["text"]
    assert val.bytes == sum(len(d["text"].encode()) for d in held_out)
    for split in ("train", "val"):
        shard = f"{split}-00000.bin"
        assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()


def test_ids_outside_the_vocabulary_are_rejected(tmp_path, corpus):
    folder, _ = corpus
    message = r"document 'doc-000': token id \d+ is outside the vocabulary \(size 1000\)"
    with pytest.raises(TokenizeError, match=message):  # raised in a worker process, re-raised here
        tokenize_documents([folder], "llama3", tmp_path / "ds", workers=2, vocab_size=1000, progress=False)
    assert not (tmp_path / "ds" / INDEX_FILE).exists()


def test_interrupted_run_leaves_no_index(tmp_path, corpus):
    folder, docs = corpus
    inputs = tmp_path / "in"
    write_documents(inputs / "a.jsonl", docs * 5)  # more than one batch of documents
    (inputs / "b.jsonl").write_text('{"id": "x", "text": "fine"}\n{"id": "y", "text": \n')
    with pytest.raises(DocumentError, match=r"b.jsonl:2: not a JSON line"):
        tokenize_documents([inputs], "llama3", tmp_path / "ds", workers=1, shard_tokens=50, progress=False)
    written = sorted(p.name for p in (tmp_path / "ds").iterdir())
    assert "train-00000.bin" in written  # shards were finished before the bad line...
    assert INDEX_FILE not in written and not [n for n in written if n.endswith(".tmp")]  # ...but no index
    with pytest.raises(TokenDatasetError, match="no token dataset index"):
        TokenDataset(tmp_path / "ds")


def test_binary_and_invalid_utf8_inputs(tmp_path, tokenizer):
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(DocumentError, match="looks binary"):
        tokenize_documents([tmp_path / "blob.txt"], "llama3", tmp_path / "ds", workers=1, progress=False)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    stats = tokenize_documents([tmp_path / "latin1.txt"], "llama3", tmp_path / "ds", workers=1, progress=False)
    ds = TokenDataset(tmp_path / "ds")
    assert stats["documents"] == 1
    assert tokenizer.decode(ds.document(0).tolist()[1:-1]) == "caf\ufffd au lait"
    assert ds.bytes == len("caf\ufffd au lait".encode())
    (tmp_path / "empty.jsonl").write_text('{"id": "e", "text": ""}\n')
    stats = tokenize_documents([tmp_path / "empty.jsonl"], "llama3", tmp_path / "ds", workers=1, overwrite=True,
                               progress=False)
    assert (stats["documents"], stats["empty_documents"]) == (0, 1)
    assert TokenDataset(tmp_path / "ds").num_documents == 0


def test_damaged_datasets_fail_with_the_file_named(tmp_path, corpus):
    folder, _ = corpus
    tokenize_documents([folder / "a.jsonl"], "llama3", tmp_path / "ds", workers=1, progress=False)
    with pytest.raises(TokenDatasetError, match=r"no split 'test' \(splits: train, val\)"):
        TokenDataset(tmp_path / "ds", "test")
    bin_path = tmp_path / "ds" / "train-00000.bin"
    bin_path.write_bytes(bin_path.read_bytes()[:-4])
    with pytest.raises(TokenDatasetError, match=r"train-00000.bin: \d+ bytes, expected"):
        TokenDataset(tmp_path / "ds")
    (tmp_path / "ds" / INDEX_FILE).write_text("{not json")
    with pytest.raises(TokenDatasetError, match="index.json: corrupt index"):
        TokenDataset(tmp_path / "ds")


def test_cli_tokenize_and_bad_input(tmp_path, corpus, capsys):
    folder, docs = corpus
    args = ["tokenize", "--tokenizer", "llama3", "--input", str(folder / "a.jsonl"), str(folder / "c.parquet"),
            "--out", str(tmp_path / "ds"), "--workers", "1", "--val-fraction", "0.1", "--quiet"]
    assert main(args) == 0
    train, val = TokenDataset(tmp_path / "ds", "train"), TokenDataset(tmp_path / "ds", "val")
    expected = len(non_empty(docs[:20] + docs[40:]))
    assert train.num_documents + val.num_documents == expected
    assert "wrote" in capsys.readouterr().out
    assert main(args) == 2  # refuses to replace a dataset without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    capsys.readouterr()
    assert main(["tokenize", "--tokenizer", "llama3", "--input", str(tmp_path / "missing.jsonl"),
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pasture: error:") and "missing.jsonl" in err
    (tmp_path / "file").write_text("")
    assert main(["tokenize", "--tokenizer", "llama3", "--input", str(folder), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_missing_tokenizer_is_one_clear_line(tmp_path, corpus, capsys):
    folder, _ = corpus
    assert main(["tokenize", "--tokenizer", str(tmp_path / "nope.model"), "--input", str(folder / "a.jsonl"),
                 "--out", str(tmp_path / "ds"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.model" in err
    assert not (tmp_path / "ds" / "index.json").exists()

"""Compressor baselines: the held-out documents decoded exactly, each compressed on its own
to exactly the size the command-line tools write."""

import lzma
import sysconfig
from pathlib import Path

import numpy as np
import zstandard

from pasture.baselines import code_lengths, compressor_baselines, document_texts, xz_bits
from pasture.documents import Document, write_documents
from pasture.tokenizer import Tokenizer, resolve_tokenizer_path
from pasture.train.shards import TokenDataset
from pasture.train.tokenize import is_held_out, tokenize_documents


def test_baselines_compress_each_held_out_document_on_its_own(tmp_path):
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:60]
    docs = [Document(id=p.name, text=p.read_text(errors="replace"), source="stdlib") for p in sources]
    write_documents(tmp_path / "docs.jsonl", docs)
    tokenize_documents([str(tmp_path / "docs.jsonl")], "llama3", tmp_path / "tokens", workers=1, val_fraction=0.3,
                       progress=False)
    held_out = [d.text.encode() for d in docs if is_held_out(d.id, 0.3) and d.text]
    tokenizer = resolve_tokenizer_path("llama3")
    # the documents come back byte for byte from their tokens
    assert list(document_texts(TokenDataset(tmp_path / "tokens", "val"), Tokenizer.load(tokenizer))) == held_out
    lengths = code_lengths(tmp_path / "tokens", tokenizer)
    assert lengths["bytes"].tolist() == [len(t) for t in held_out]
    # xz -9e exactly (its dictionary cut to the document changes no output size)
    full_xz = [8 * len(lzma.compress(t, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)) for t in held_out]
    assert lengths["xz"].tolist() == full_xz == [xz_bits(t) for t in held_out]
    plain = [8 * len(zstandard.ZstdCompressor(level=19, write_checksum=True).compress(t)) for t in held_out]
    assert lengths["zstd"].tolist() == plain
    assert lengths["zstd_dict"].sum() < lengths["zstd"].sum()  # a dictionary of the training documents helps
    result = compressor_baselines(tmp_path / "tokens", tokenizer)
    total = sum(len(t) for t in held_out)
    assert result["xz_bpb"] == sum(full_xz) / total and result["zstd_bpb"] == sum(plain) / total
    assert result["val_documents"] == len(held_out)
    assert result["largest_document_share"] == max(len(t) for t in held_out) / total
    assert 0 < result["zstd_dict_bpb"] < result["zstd_bpb"] and np.isfinite(result["xz_bpb"])

"""The main job end to end on small local input, and its parts."""

import gzip
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from ticking_clock import TickingClock

from pasture import runs
from pasture.cli import main
from pasture.data.gather import Root, gather, man_to_text
from pasture.documents import Document, iter_documents, write_documents
from pasture.speedrun import unigram_bits_per_byte
from pasture.train import loop
from pasture.train.shards import SplitWriter, write_index

# 200 steps at most (150 with the test's time budget): enough to beat the unigram baseline (held-out bits/byte 4.00 against 4.12 after
# 150 steps on 2 validation batches; 1.01x the baseline after 40 steps, 1.18x after 6)
TINY = ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.multiple_of=32",
        "train.steps=200", "train.anneal_steps=20", "optim.warmup_steps=2", "train.batch_ramp=[]", "train.batch_size=4",
        "train.seq_len=64", "checkpoint.every=100", "checkpoint.anneal_every=10", "eval.every=100", "eval.batches=2",
        "log.tensorboard=false"]
POST = ["post.pairs=30", "post.heldout_fraction=0.2", "post.reward_steps=2", "post.sft_steps=6", "post.dpo_steps=2",
        "post.batch_size=4", "post.sample_prompts=4", "post.k=2", "post.max_tokens=8", "post.samples_shown=2"]


def stdlib_documents(limit_bytes: int) -> list[Document]:
    """Real text from disk: the standard library's modules, as documents."""
    docs, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(errors="replace")
        docs.append(Document(id=path.name, text=text, source="stdlib"))
        total += len(text)
        if total > limit_bytes:
            break
    return docs


def test_speedrun_end_to_end_and_rerun_skips_finished_stages(tmp_path, capsys, monkeypatch):
    src = tmp_path / "docs.jsonl"
    write_documents(src, stdlib_documents(600_000))
    # a clock that ticks 10 ms a reading: the time budget plans 20 + int((2.94 - 0.39) / 0.0195) = 150 of the
    # 200 steps at step 20 (tests/test_pretrain.py derives the same rule), and the stage counts that as finished
    args = ["speedrun", "--runs-dir", str(tmp_path / "runs"), "--name", "t", "--source", str(src),
            "--vocab-size", "512", "--no-progress", "--val-fraction", "0.1", *TINY, "train.time_budget_s=3", *POST]
    monkeypatch.setattr(loop, "time", TickingClock(0.01))
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "held-out bits/byte" in out and "unigram" in out and "xz -9e" in out and "-> DPO" in out
    assert "task/s" not in err and "it/s" not in err  # --no-progress: no bar from any stage
    assert "input files given with --source" in (tmp_path / "runs" / "t" / "report.md").read_text()
    run = tmp_path / "runs" / "t"
    summary = json.loads((run / "speedrun.json").read_text())
    assert summary["pretrain"]["steps"] == 150 and summary["pretrain"]["tokens"] == 150 * 4 * 64
    assert summary["pretrain"]["time_budget_s"] == 3
    assert summary["tokenizer"]["vocab_size"] == 512 + 256 and summary["tokenizer"]["held-out chars/token"] > 1
    kept = summary["curation"]["stages"]
    assert kept[0]["docs_in"] == len(list(iter_documents(src)))
    e = summary["evaluation"]
    assert 0 < e["val_bpb"] and 0 < e["unigram_bpb"] and e["bpb_vs_unigram"] == pytest.approx(e["val_bpb"] / e["unigram_bpb"])
    assert set(summary["baselines"]) == {"unigram_bpb", "xz_bpb", "zstd_bpb", "zstd_dict_bpb"}
    assert summary["val_bpb"] == e["val_bpb"] and summary["baselines"]["unigram_bpb"] == e["unigram_bpb"]
    assert 0 < summary["baselines"]["zstd_dict_bpb"] < summary["baselines"]["zstd_bpb"]
    assert summary["scaling"]["flops"] == 6 * e["matmul_params"] * summary["pretrain"]["tokens"]
    assert e["beats_unigram"] and e["bpb_vs_unigram"] < 1  # the model learned more than token frequencies
    assert len(summary["samples"]) == 3
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html and "Final metrics" in html
    assert "against baselines" in html and "`xz -9e`" in (run / "report.md").read_text()
    assert (run / "plots" / "scaling.png").stat().st_size > 10_000
    assert (run / "plots" / "loss.png").stat().st_size > 1000
    assert {p.stem for p in (run / "stages").glob("*.json")} == {
        "settings", "gather", "curate", "tokenizer", "tokenize", "pretrain", "evaluate", "sample", "post"}
    assert (run / "train" / "averaged" / "COMPLETE").exists()

    post = summary["post"]  # post-training: reward model, SFT, rejection sampling, DPO
    assert post["heldout_questions"] == 6 and post["answer_loss"]["sft"] < post["answer_loss"]["base"]
    assert post["rejection_sampling"]["samples"] == 4 * 2 and len(post["samples"]) == 2
    assert summary["total_seconds"] >= post["seconds"] > 0
    assert "Post-training" in html and "held-out answer loss" in html
    assert runs.run_folder(run) == run / "post" / "dpo"  # the speedrun's result is its chat model
    assert main(["generate", str(run), "--prompt", "What", "--max-tokens", "4", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("What")

    generate = ["generate", str(run / "train"), "--prompt", "def ", "--max-tokens", "8", "--temperature", "0"]
    assert main(generate) == 0
    assert capsys.readouterr().out.startswith("def ")

    assert main(args) == 0  # a rerun skips every finished stage
    assert capsys.readouterr().out.count("already done") == 8
    assert main(["report", str(run)]) == 0
    assert main(args + ["train.steps=201"]) == 2  # other settings into the same folder: refused
    assert "other settings (recipe_overrides differ)" in capsys.readouterr().err
    for bad in ("post.nope=1", "post.k=two"):  # refused before any stage runs
        assert main([*args[:4], "fresh", *args[5:], bad]) == 2
        assert "post." in capsys.readouterr().err and not (tmp_path / "runs" / "fresh").exists()
    assert main(["speedrun", "--runs-dir", str(tmp_path / "runs"), "--name", "bad", "--source",
                 str(tmp_path / "missing.warc"), "--no-progress"]) == 2
    assert "missing.warc" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "bad" / "stages" / "gather.json").exists()


def test_gather_reads_each_root_within_budget(tmp_path):
    code, docs, man = tmp_path / "code", tmp_path / "docs", tmp_path / "man" / "man1"
    for folder in (code, docs, man):
        folder.mkdir(parents=True)
    for i in range(20):
        (code / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 20)
        (docs / f"README{i}.md").write_text(f"# Title {i}\n\nSome prose about thing {i}.\n" * 20)
        (docs / f"page{i}.html").write_text(f"<html><body><p>Page {i} text here and more.</p></body></html>")
    (man / "tool.1.gz").write_bytes(gzip.compress(b'.TH TOOL 1\n.SH NAME\ntool \\- does \\fBthings\\fR\n.PP\nMore.\n'))
    (docs / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    roots = [Root("code", code, "python"), Root("docs", docs, "system-docs"), Root("man", tmp_path / "man", "man")]
    result = gather(roots, tmp_path / "out", max_bytes=10_000, shards=2)
    per = result["roots"]
    assert result["bytes"] >= 10_000 and result["bytes"] < 10_000 + 2_000
    assert per["man"]["documents"] == 1 and per["code"]["documents"] > 5 and per["docs"]["documents"] > 5
    assert abs(per["code"]["bytes"] - per["docs"]["bytes"]) < 1_000  # the budget is shared evenly
    written = list(iter_documents(tmp_path / "out"))
    assert len(written) == result["documents"]
    assert not any("\x00" in d.text for d in written)
    assert man_to_text(gzip.decompress((man / "tool.1.gz").read_bytes()).decode()) == "NAME\ntool - does things\n\nMore."


def test_unigram_baseline_matches_hand_computation(tmp_path):
    index = {"format": "pasture-tokens", "version": 1, "dtype": "uint32", "vocab_size": 4, "tokenizer": None,
             "bos_id": 0, "eos_id": 3, "splits": {}}
    for split, docs, nbytes in (("train", [[0, 1, 1, 2, 3], [0, 1, 3]], 10), ("val", [[0, 2, 1, 3]], 6)):
        w = SplitWriter(tmp_path, split, 100)
        for d in docs:
            w.add(np.array(d, np.uint32), nbytes // len(docs))
        index["splits"][split] = w.finish()
    write_index(tmp_path, index)
    counts = np.array([2, 3, 1, 2]) + 1  # add-one smoothing over the vocabulary of 4
    p = counts / counts.sum()
    bits = -np.log2(p[[2, 1, 3]]).sum()
    result = unigram_bits_per_byte(tmp_path)
    assert result["unigram_bpb"] == pytest.approx(bits / 6)
    assert result["unigram_bits_per_token"] == pytest.approx(bits / 3)


def test_fineweb_style_parquet_columns_land_in_meta(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": ["hello world"], "id": ["<urn:uuid:1>"], "url": ["https://a.org/x"],
                      "dump": ["CC-MAIN-2024-10"], "date": ["2024-03-01T00:00:00Z"], "language_score": [0.98]})
    pq.write_table(table, tmp_path / "shard.parquet")
    (doc,) = list(iter_documents(tmp_path / "shard.parquet"))
    assert (doc.id, doc.url, doc.text) == ("<urn:uuid:1>", "https://a.org/x", "hello world")
    assert doc.meta == {"dump": "CC-MAIN-2024-10", "date": "2024-03-01T00:00:00Z", "language_score": 0.98}

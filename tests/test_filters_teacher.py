"""Quality labels from a pasture model as teacher: a model trained on prose finds prose predictable."""

import numpy as np

from test_filters_quality import low_quality_pages, stdlib_docstrings

from pasture.data.documents import Document, write_documents
from pasture.data.filters.quality import TextClassifier, train_quality_cli
from pasture.data.filters.teacher import label_by_teacher
from pasture.tokenizer import train_tokenizer
from pasture.train.pretrain import pretrain
from pasture.train.recipe import load_recipe, parse_recipe
from pasture.train.tokenize import tokenize_documents


def test_teacher_labels_prose_high_and_salad_low(tmp_path):
    prose = stdlib_docstrings()[:120]
    salad = low_quality_pages(prose, 60)
    write_documents(tmp_path / "prose.jsonl", [Document(f"p{i}", t) for i, t in enumerate(prose)])
    write_documents(tmp_path / "mixed.jsonl", [Document(f"m{i}", t) for i, t in enumerate(prose[:60] + salad)])
    train_tokenizer(tmp_path / "prose.jsonl", 400, tmp_path / "tok", show_progress=False)
    tokenize_documents(tmp_path / "prose.jsonl", tmp_path / "tok", tmp_path / "tokens", workers=1,
                       val_fraction=0.05, progress=False)
    raw = load_recipe("tiny", [
        'data.train=["%s"]' % (tmp_path / "tokens"), 'log.dir="%s"' % (tmp_path / "teacher"),
        "model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.multiple_of=32",
        "train.steps=30", "train.anneal_steps=0", "train.batch_ramp=[]", "train.batch_size=8", "train.seq_len=64",
        "optim.warmup_steps=5", "eval.every=0", "checkpoint.every=30", "checkpoint.anneal_every=0",
        "log.progress=false", "log.tensorboard=false", "data.lanes=4"])
    pretrain(parse_recipe(raw), raw, log=lambda *_: None)

    positive, negative, stats = label_by_teacher(tmp_path / "mixed.jsonl", tmp_path / "teacher",
                                                 tmp_path / "teacher" / "tokenizer.model", fraction=0.3)
    prose_words = {" ".join(t.lower().split()) for t in prose}
    is_prose = lambda words: " ".join(words) in prose_words or len(set(words)) > 0.5 * len(words)  # noqa: E731
    assert stats["per_label"] == 36 and len(positive) == len(negative) == 36
    assert np.mean([is_prose(w) for w in positive]) > np.mean([is_prose(w) for w in negative])
    assert stats["positive_max_loss"] <= stats["negative_min_loss"]

    assert train_quality_cli(["--teacher", str(tmp_path / "teacher"), "--unlabeled", str(tmp_path / "mixed.jsonl"),
                              "--out", str(tmp_path / "clf"), "--epochs", "3", "--buckets", "4096"]) == 0
    assert TextClassifier.load(tmp_path / "clf").metrics["teacher"]["per_label"] == 36

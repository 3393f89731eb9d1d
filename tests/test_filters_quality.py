"""The fastText-style quality classifier: training, held-out accuracy, the stage, the CLI."""

import importlib
import inspect
import json
import random
from pathlib import Path

import numpy as np
import pytest

from pasture.data.cli import train_quality_command
from pasture.data.filters import QualityFilter
from pasture.data.filters.base import TextFeatures
from pasture.data.filters.quality import (
    ClassifierError,
    TextClassifier,
    train_quality_classifier,
    train_text_classifier,
)
from pasture.documents import Document, write_documents
from pasture.errors import PastureError

MODULES = ["json", "os", "pathlib", "collections", "itertools", "functools", "re", "textwrap", "argparse", "logging",
           "subprocess", "shutil", "datetime", "decimal", "fractions", "statistics", "heapq", "csv", "urllib.parse",
           "unittest", "inspect", "ast", "dataclasses", "enum", "threading", "queue", "tarfile", "zipfile"]
BOILERPLATE = ["Home", "About us", "Contact", "Login", "Sign up", "Cookie policy", "Privacy", "Terms of use", "Subscribe",
               "Newsletter", "Share on Facebook", "Tweet", "Read more", "Next page", "Previous", "All rights reserved",
               "Accept cookies", "Menu", "Search", "Cart (0)", "Follow us", "Sitemap", "Buy now", "Free shipping"]


def stdlib_docstrings(min_words=25):
    """Well-formed English prose: the docstrings of the Python standard library."""
    texts = []
    for name in MODULES:
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module):
            # only what the module itself defines: its other attributes depend on what else was imported
            defined_here = (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == name
            doc = inspect.getdoc(obj) if defined_here else None
            if doc and len(doc.split()) >= min_words and doc not in texts:
                texts.append(doc)
    return texts


def low_quality_pages(positives, n, seed=0):
    """Random word salad (words drawn uniformly from the positives' vocabulary), and
    navigation boilerplate."""
    rng = random.Random(seed)
    vocabulary = sorted({w for t in positives for w in t.split()})
    pages = []
    for i in range(n):
        if i % 2:
            pages.append(" ".join(rng.choice(vocabulary) for _ in range(rng.randint(30, 120))))
        else:
            pages.append(" | ".join(rng.choice(BOILERPLATE) for _ in range(rng.randint(15, 40))) + f" © {rng.randint(1999, 2024)}")
    return pages


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    positives = stdlib_docstrings()[:250]
    negatives = low_quality_pages(positives, len(positives))
    write_documents(root / "pos.jsonl", [Document(f"p{i}", t) for i, t in enumerate(positives)])
    write_documents(root / "neg.jsonl", [Document(f"n{i}", t) for i, t in enumerate(negatives)])
    return root, positives, negatives


def test_cli_trains_a_classifier_with_high_held_out_accuracy(corpus, capsys):
    root, positives, negatives = corpus
    assert len(positives) == 250
    out = root / "model"
    code = train_quality_command(["--positive", str(root / "pos.jsonl"), "--negative", str(root / "neg.jsonl"), "--out", str(out),
                              "--epochs", "4", "--buckets", "65536", "--valid-fraction", "0.2"])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["valid_docs"] == 100 and metrics["train_docs"] == 400
    assert metrics["valid_accuracy"] > 0.9
    assert json.loads((out / "classifier.json").read_text())["labels"] == ["low", "high"]

    stage = QualityFilter(model=str(out), threshold=0.5)
    good = Document("g", inspect.getdoc(json.dumps))
    salad = Document("s", low_quality_pages(positives, 2, seed=99)[1])
    assert stage.process(good) is None and good.meta["quality_score"] > 0.5
    assert stage.process(salad) == "quality" and salad.meta["quality_score"] < 0.5
    assert TextClassifier.load(out).score(good, "high") == pytest.approx(good.meta["quality_score"], abs=1e-4)


def test_python_api_is_deterministic_under_a_seed(corpus):
    root, _, _ = corpus
    kwargs = dict(max_docs=60, epochs=2, buckets=4096, dim=8)
    a = train_quality_classifier(root / "pos.jsonl", root / "neg.jsonl", root / "a", seed=3, **kwargs)
    b = train_quality_classifier(root / "pos.jsonl", root / "neg.jsonl", root / "b", seed=3, **kwargs)
    assert a["docs_per_label"] == {"high": 60, "low": 60}
    assert a["valid_accuracy"] == b["valid_accuracy"] and a["train_accuracy"] == b["train_accuracy"]
    assert (TextClassifier.load(root / "a").table == TextClassifier.load(root / "b").table).all()


def test_early_stopping_keeps_the_best_held_out_epoch_on_noisy_labels(corpus):
    """150 documents per label with 20% of each label's documents swapped: ten epochs memorise the noise
    (train accuracy 1.0); keeping the best held-out epoch scores higher on 200 clean unseen documents."""
    _, positives, negatives = corpus
    rng = random.Random(0)
    pos, neg = ([TextFeatures(t).lower_words for t in rng.sample(texts, 250)] for texts in (positives, negatives))
    noisy = {"low": neg[30:150] + pos[:30], "high": pos[30:150] + neg[:30]}
    unseen = [(w, "high") for w in pos[150:]] + [(w, "low") for w in neg[150:]]
    kwargs = dict(buckets=65536, valid_fraction=0.2, seed=0)

    def clean_accuracy(model: TextClassifier) -> float:
        return float(np.mean([model.labels[int(np.argmax(model.predict_proba_words(w)))] == y for w, y in unseen]))

    last = train_text_classifier(noisy, epochs=10, patience=0, **kwargs)
    best = train_text_classifier(noisy, epochs=10, patience=3, **kwargs)
    assert (last.metrics["best_epoch"], last.metrics["epochs_trained"]) == (10, 10)
    assert best.metrics["best_epoch"] <= 3 and best.metrics["epochs_trained"] == best.metrics["best_epoch"] + 3
    assert last.metrics["train_accuracy"] > 0.99 and best.metrics["train_accuracy"] < 0.9
    assert best.metrics["valid_accuracy"] > last.metrics["valid_accuracy"]  # measured 0.75 vs 0.68
    assert best.metrics["valid_loss"] < 0.7 < last.metrics["valid_loss"]  # measured 0.61 vs 1.38
    assert clean_accuracy(best) >= 0.93 and clean_accuracy(best) >= clean_accuracy(last) + 0.04  # 0.965 vs 0.875
    # the kept model is exactly the one that many epochs of training give
    again = train_text_classifier(noisy, epochs=best.metrics["best_epoch"], patience=0, **kwargs)
    assert np.array_equal(again.table, best.table) and np.array_equal(again.bias, best.bias)


def test_bad_inputs_raise_clear_pasture_errors(corpus, tmp_path: Path):
    root, _, _ = corpus
    with pytest.raises(ClassifierError, match="give --positive and --negative documents"):
        train_quality_command(["--positive", str(root / "pos.jsonl"), "--out", str(tmp_path / "m")])
    with pytest.raises(PastureError, match="does not exist"):
        train_quality_command(["--positive", str(tmp_path / "nope.jsonl"), "--negative", str(root / "neg.jsonl"), "--out", str(tmp_path / "m")])
    write_documents(tmp_path / "one.jsonl", [Document("x", "only one document")])
    with pytest.raises(ClassifierError, match="label 'negative' has 1 non-empty document"):
        train_quality_command(["--positive", str(root / "pos.jsonl"), "--negative", str(tmp_path / "one.jsonl"), "--out", str(tmp_path / "m")])
    with pytest.raises(ClassifierError, match="patience must be >= 0"):
        train_quality_command(["--positive", str(root / "pos.jsonl"), "--negative", str(root / "neg.jsonl"),
                           "--out", str(tmp_path / "m"), "--patience", "-1"])
    with pytest.raises(ClassifierError, match="not a classifier directory"):
        QualityFilter(model=str(tmp_path))
    with pytest.raises(PastureError, match="needs `model`"):
        QualityFilter()

"""Model-based quality filtering (Llama 3 §3.1.1): a fastText-style classifier.

Features are hashed lowercase word unigrams and bigrams; the model averages their
embeddings and applies a linear softmax layer (Joulin et al. 2016), trained with
torch. Because the model is linear in the averaged embeddings, it is saved
collapsed into one (buckets x labels) table, so scoring needs only numpy: a
gather, a mean and a softmax. No pretrained weights are downloaded: train it on
your own positives (e.g. reference-quality pages) and negatives (random web).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from pasture.data.filters.base import FilterError, TextFeatures
from pasture.data.filters.teacher import TextScorer, label_by_teacher
from pasture.documents import Document, iter_documents

MODEL_FILE = "classifier.npz"
CONFIG_FILE = "classifier.json"
QUALITY_LABELS = ("low", "high")  # negative, positive


class ClassifierError(FilterError):
    """Bad training data, settings or model directory for a text classifier."""


def hashed_features(lower_words: Sequence[str], buckets: int, max_words: int = 20_000) -> np.ndarray:
    """Bucket ids of the word unigrams and bigrams of a document (stable across processes)."""
    words = lower_words[:max_words]
    if not words:
        return np.zeros(0, dtype=np.int64)
    h = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in words), np.uint64, len(words))
    bigrams = (h[:-1] * np.uint64(0x9E3779B97F4A7C15) + h[1:] * np.uint64(0xC2B2AE3D27D4EB4F) + np.uint64(0x165667B1)) >> np.uint64(16)
    return (np.concatenate([h, bigrams]) % np.uint64(buckets)).astype(np.int64)


class TextClassifier:
    """A trained hashed-n-gram linear classifier: `predict_proba(text) -> probabilities`."""

    def __init__(self, table: np.ndarray, bias: np.ndarray, labels: Sequence[str], max_words: int = 20_000, metrics: dict | None = None) -> None:
        self.table = table.astype(np.float32, copy=False)
        self.bias = bias.astype(np.float32, copy=False)
        self.labels = list(labels)
        self.max_words = max_words
        self.metrics = metrics or {}

    @property
    def buckets(self) -> int:
        return self.table.shape[0]

    def predict_proba_words(self, lower_words: Sequence[str]) -> np.ndarray:
        ids = hashed_features(lower_words, self.buckets, self.max_words)
        logits = self.bias + (self.table[ids].mean(axis=0) if len(ids) else 0.0)
        e = np.exp(logits - logits.max())
        return e / e.sum()

    def predict_proba(self, doc: Document | str) -> np.ndarray:
        """Label probabilities, in the order of `self.labels`."""
        words = TextFeatures.of(doc).lower_words if isinstance(doc, Document) else TextFeatures(doc).lower_words
        return self.predict_proba_words(words)

    def score(self, doc: Document | str, label: str) -> float:
        return float(self.predict_proba(doc)[self.labels.index(label)])

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / MODEL_FILE, table=self.table, bias=self.bias)
        config = {"kind": "hashed-ngram-linear", "labels": self.labels, "buckets": self.buckets, "word_ngrams": 2, "max_words": self.max_words, "metrics": self.metrics}
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, model_dir: str | Path) -> "TextClassifier":
        d = Path(model_dir)
        if not (d / CONFIG_FILE).is_file() or not (d / MODEL_FILE).is_file():
            raise ClassifierError(f"{d} is not a classifier directory (needs {CONFIG_FILE} and {MODEL_FILE}; train one with `pasture curate train-quality`)")
        try:
            config = json.loads((d / CONFIG_FILE).read_text())
            arrays = np.load(d / MODEL_FILE)
            table, bias = arrays["table"], arrays["bias"]
        except (ValueError, KeyError, OSError) as e:
            raise ClassifierError(f"{d}: unreadable classifier ({e})") from None
        if table.shape != (config["buckets"], len(config["labels"])) or bias.shape != (len(config["labels"]),):
            raise ClassifierError(f"{d}: classifier weights do not match {CONFIG_FILE}")
        return cls(table, bias, config["labels"], config.get("max_words", 20_000), config.get("metrics"))


def _read_texts(paths: Sequence[str | Path] | str | Path, label: str, max_docs: int | None) -> list[list[str]]:
    docs = []
    for doc in iter_documents(paths):
        words = TextFeatures(doc.text).lower_words
        if words:
            docs.append(words)
            if max_docs is not None and len(docs) >= max_docs:
                break
    if len(docs) < 2:
        raise ClassifierError(f"label {label!r} has {len(docs)} non-empty document(s) in {paths}; need at least 2 to train and hold one out")
    return docs


def _evaluate(table: np.ndarray, bias: np.ndarray, examples: list[tuple[np.ndarray, int]]) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a collapsed model on (feature ids, label) examples."""
    logits = np.stack([bias + (table[x].mean(axis=0) if len(x) else 0.0) for x, _ in examples])
    y = np.array([y for _, y in examples])
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(np.mean(logits.argmax(axis=1) == y)), float(-log_p[np.arange(len(y)), y].mean())


def train_text_classifier(
    docs_by_label: Mapping[str, Sequence[Sequence[str]]],
    epochs: int = 5,
    dim: int = 16,
    buckets: int = 2**18,
    lr: float = 0.05,
    batch_size: int = 32,
    valid_fraction: float = 0.1,
    seed: int = 0,
    max_words: int = 20_000,
    patience: int = 3,
) -> TextClassifier:
    """Train on lowercased word lists per label; held-out accuracy goes in `.metrics`.

    A few hundred documents are memorised in a couple of epochs (train accuracy 1.0) and noisy labels
    are learned with them, so after each epoch the held-out split is scored and the epoch with the best
    accuracy (ties: lower loss) is kept, as fastText's autotune picks by the validation score; training
    stops after `patience` epochs without improvement. `patience=0` trains every epoch and keeps the last.
    """
    if len(docs_by_label) < 2:
        raise ClassifierError(f"need documents of at least 2 labels, got {sorted(docs_by_label)}")
    if not 0 < valid_fraction < 1:
        raise ClassifierError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    if epochs < 1 or dim < 1 or buckets < 2 or lr <= 0 or batch_size < 1:
        raise ClassifierError("epochs, dim, batch_size must be >= 1, buckets >= 2 and lr > 0")
    if patience < 0:
        raise ClassifierError(f"patience must be >= 0 (0: no early stopping), got {patience}")
    labels = list(docs_by_label)
    rng = np.random.default_rng(seed)
    train, valid = [], []
    for y, label in enumerate(labels):  # stratified split: every label is in both sets
        docs = docs_by_label[label]
        order = rng.permutation(len(docs))
        n_valid = min(max(1, round(len(docs) * valid_fraction)), len(docs) - 1)
        examples = [(hashed_features(docs[i], buckets, max_words), y) for i in order]
        valid += examples[:n_valid]
        train += examples[n_valid:]
    train = [train[i] for i in rng.permutation(len(train))]

    torch.manual_seed(seed)
    embedding = torch.nn.EmbeddingBag(buckets, dim, mode="mean", sparse=True)
    torch.nn.init.uniform_(embedding.weight, -1.0 / dim, 1.0 / dim)
    output = torch.nn.Linear(dim, len(labels))
    optimizers = [torch.optim.SparseAdam(embedding.parameters(), lr=lr), torch.optim.Adam(output.parameters(), lr=lr)]

    def batch_logits(batch: list[tuple[np.ndarray, int]]) -> torch.Tensor:
        ids = torch.from_numpy(np.concatenate([x for x, _ in batch]))
        offsets = torch.tensor(np.cumsum([0] + [len(x) for x, _ in batch[:-1]]), dtype=torch.long)
        return output(embedding(ids, offsets))

    start = time.perf_counter()
    train = [(x, y) for x, y in train if len(x)]
    best: tuple[tuple[float, float], int, np.ndarray, np.ndarray] | None = None  # (rank, epoch, table, bias)
    for epoch in range(1, epochs + 1):
        for i in range(0, len(train), batch_size):
            batch = train[i : i + batch_size]
            loss = torch.nn.functional.cross_entropy(batch_logits(batch), torch.tensor([y for _, y in batch]))
            for opt in optimizers:
                opt.zero_grad()
            loss.backward()
            for opt in optimizers:
                opt.step()
        train = [train[i] for i in rng.permutation(len(train))]
        with torch.no_grad():
            table = (embedding.weight @ output.weight.T).numpy()
            bias = output.bias.numpy().copy()
        valid_accuracy, valid_loss = _evaluate(table, bias, valid)
        rank = (-valid_accuracy, valid_loss)
        if best is None or patience == 0 or rank < best[0]:
            best = (rank, epoch, table, bias)
        elif epoch - best[1] >= patience:
            break
    (negative_accuracy, valid_loss), best_epoch, table, bias = best
    model = TextClassifier(table, bias, labels, max_words)
    model.metrics = {
        "labels": labels,
        "train_docs": len(train),
        "valid_docs": len(valid),
        "docs_per_label": {label: len(docs_by_label[label]) for label in labels},
        "train_accuracy": round(_evaluate(table, bias, train)[0], 4),
        "valid_accuracy": round(-negative_accuracy, 4),
        "valid_loss": round(valid_loss, 4),
        "epochs": epochs,
        "epochs_trained": epoch,
        "best_epoch": best_epoch,
        "patience": patience,
        "dim": dim,
        "buckets": buckets,
        "train_seconds": round(time.perf_counter() - start, 2),
    }
    return model


def train_quality_classifier(
    positive_paths: Sequence[str | Path] | str | Path,
    negative_paths: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    max_docs: int | None = None,
    **train_options,
) -> dict:
    """Train a high/low quality classifier from positive and negative document files,
    save it to `out_dir`, and return its metrics (with held-out `valid_accuracy`)."""
    positive = _read_texts(positive_paths, "positive", max_docs)
    negative = _read_texts(negative_paths, "negative", max_docs)
    return _train_and_save(positive, negative, out_dir, **train_options)


def train_quality_from_teacher(
    unlabeled_paths: Sequence[str | Path] | str | Path,
    score: TextScorer,
    out_dir: str | Path,
    fraction: float = 0.3,
    max_docs: int | None = None,
    teacher: str = "",
    **train_options,
) -> dict:
    """Label unlabeled documents with a model as teacher (`score`: each text's mean next-token
    loss; see `teacher.py`), then train on those labels; the metrics include the teacher's
    labelling statistics under `teacher`."""
    positive, negative, teacher_stats = label_by_teacher(unlabeled_paths, score, fraction, max_docs)
    return _train_and_save(positive, negative, out_dir, {"teacher": {"teacher": teacher, **teacher_stats}},
                           **train_options)


def _train_and_save(positive: list[list[str]], negative: list[list[str]], out_dir: str | Path,
                    extra_metrics: dict | None = None, **train_options) -> dict:
    docs = {QUALITY_LABELS[1]: positive, QUALITY_LABELS[0]: negative}
    model = train_text_classifier({label: docs[label] for label in QUALITY_LABELS}, **train_options)
    model.metrics.update(extra_metrics or {})
    model.save(out_dir)
    return model.metrics


class QualityFilter:
    """Scores each document with a trained quality classifier into
    `meta["quality_score"]` (probability of "high") and drops it ("quality") below
    `threshold`."""

    name = "quality"

    def __init__(self, model: str | None = None, threshold: float = 0.5) -> None:
        if not model:
            raise FilterError("the quality stage needs `model`: a directory written by `pasture curate train-quality`")
        if not 0 <= threshold <= 1:
            raise FilterError(f"quality.threshold must be in [0, 1], got {threshold}")
        self.classifier = TextClassifier.load(model)
        if QUALITY_LABELS[1] not in self.classifier.labels:
            raise FilterError(f"{model}: classifier labels {self.classifier.labels} have no {QUALITY_LABELS[1]!r}")
        self.threshold = threshold

    def process(self, doc: Document) -> str | None:
        score = self.classifier.score(doc, QUALITY_LABELS[1])
        doc.meta["quality_score"] = round(score, 4)
        return "quality" if score < self.threshold else None


"""Quality labels from a pasture model as teacher, by perplexity.

Llama 3 labelled web documents with Llama 2 and trained cheap classifiers on those
labels. Here a pasture model plays the teacher: each unlabelled document is scored by
the teacher's mean next-token loss over its first tokens, the lowest-loss share becomes
"high" and the highest-loss share "low", and the fastText-style classifier learns to
reproduce that split at a fraction of the cost. The scoring function comes from the
caller (`pasture curate train-quality --teacher` wires in `train.validation.text_losses`),
so curation never imports a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pasture.data.filters.base import FilterError, TextFeatures
from pasture.documents import iter_documents

TextScorer = Callable[[Sequence[str]], np.ndarray]  # texts -> mean next-token loss of each


def label_by_teacher(paths: Sequence[str | Path] | str | Path, score: TextScorer, fraction: float = 0.3,
                     max_docs: int | None = None) -> tuple[list[list[str]], list[list[str]], dict]:
    """(positive word lists, negative word lists, stats): the `fraction` of documents the teacher
    (`score`) finds most and least predictable."""
    if not 0 < fraction <= 0.5:
        raise FilterError(f"teacher fraction must be in (0, 0.5], got {fraction}")
    texts = []
    for doc in iter_documents(paths):
        if doc.text.strip():
            texts.append(doc.text)
            if max_docs is not None and len(texts) >= max_docs:
                break
    count = int(len(texts) * fraction)
    if count < 2:
        raise FilterError(f"{len(texts)} documents give {count} per label at fraction {fraction}; need at least 2")
    losses = score(texts)
    order = np.argsort(losses, kind="stable")
    positive = [TextFeatures(texts[i]).lower_words for i in order[:count]]
    negative = [TextFeatures(texts[i]).lower_words for i in order[-count:]]
    finite = losses[np.isfinite(losses)]
    stats = {"documents": len(texts), "per_label": count,
             "positive_max_loss": float(losses[order[count - 1]]), "negative_min_loss": float(losses[order[-count]]),
             "median_loss": float(np.median(finite)) if len(finite) else None}
    return positive, negative, stats

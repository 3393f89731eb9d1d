"""Quality labels from a pasture model as teacher, by perplexity.

Llama 3 labelled web documents with Llama 2 and trained cheap classifiers on those
labels. Here a pasture checkpoint plays the teacher: each unlabelled document is
scored by the teacher's mean next-token loss over its first tokens, the
lowest-loss share becomes "high" and the highest-loss share "low", and the
fastText-style classifier learns to reproduce that split at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pasture.data.documents import iter_documents
from pasture.data.filters.base import FilterError, TextFeatures


def teacher_losses(texts: Sequence[str], checkpoint: str | Path, tokenizer: str | Path,
                   max_tokens: int = 512, device: str = "auto") -> np.ndarray:
    """Mean next-token loss (nats) of each text under the teacher, over its first `max_tokens` tokens."""
    import torch

    from pasture.model import load
    from pasture.tokenizer import Tokenizer
    from pasture.runtime import resolve_device

    dev = resolve_device(device)
    model, config = load(checkpoint, device=dev)
    model.eval()
    tok = Tokenizer.load(tokenizer)
    if tok.n_words > config.vocab_size:
        raise FilterError(f"teacher tokenizer has {tok.n_words} ids but the teacher model only {config.vocab_size}")
    losses = np.empty(len(texts))
    with torch.inference_mode():
        for i, ids in enumerate(tok.encode_batch(list(texts), bos=True)):
            ids = torch.tensor(ids[: max_tokens + 1], device=dev)[None]
            if ids.shape[1] < 2:
                losses[i] = np.inf  # nothing to score: never a positive
                continue
            logits = model(ids[:, :-1])
            losses[i] = torch.nn.functional.cross_entropy(logits[0], ids[0, 1:]).item()
    return losses


def label_by_teacher(paths: Sequence[str | Path] | str | Path, checkpoint: str | Path, tokenizer: str | Path,
                     fraction: float = 0.3, max_docs: int | None = None, max_tokens: int = 512,
                     device: str = "auto") -> tuple[list[list[str]], list[list[str]], dict]:
    """(positive word lists, negative word lists, stats): the `fraction` of documents the teacher
    finds most and least predictable."""
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
    losses = teacher_losses(texts, checkpoint, tokenizer, max_tokens, device)
    order = np.argsort(losses, kind="stable")
    positive = [TextFeatures(texts[i]).lower_words for i in order[:count]]
    negative = [TextFeatures(texts[i]).lower_words for i in order[-count:]]
    finite = losses[np.isfinite(losses)]
    stats = {"teacher": str(checkpoint), "documents": len(texts), "per_label": count,
             "positive_max_loss": float(losses[order[count - 1]]), "negative_min_loss": float(losses[order[-count]]),
             "median_loss": float(np.median(finite)) if len(finite) else None}
    return positive, negative, stats

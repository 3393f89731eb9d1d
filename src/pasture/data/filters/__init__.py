"""Per-document stages of `pasture curate`: filters, taggers and PII masking.

Each stage is built from its recipe section (keyword arguments, all defaulted) and
has `process(doc) -> str | None`: None keeps the document (maybe after editing its
text or meta), a string is the short reason it was dropped. Stages that need corpus
statistics also have `fit(docs)`, which the engine calls on a sample first.
"""

from __future__ import annotations

from pasture.data.filters.base import FilterError
from pasture.data.filters.domains import DomainTagger
from pasture.data.filters.heuristic import HeuristicFilter
from pasture.data.filters.language import LanguageFilter
from pasture.data.filters.quality import QualityFilter
from pasture.data.filters.safety import SafetyFilter

# recipe section name -> stage class
STAGES: dict[str, type] = {
    "heuristic": HeuristicFilter,
    "language": LanguageFilter,
    "quality": QualityFilter,
    "safety": SafetyFilter,
    "domains": DomainTagger,
}

__all__ = [
    "STAGES",
    "FilterError",
    "DomainTagger",
    "HeuristicFilter",
    "LanguageFilter",
    "QualityFilter",
    "SafetyFilter",
]

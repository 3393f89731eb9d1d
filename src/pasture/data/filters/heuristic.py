"""Heuristic document filters of Llama 3 §3.1.1: Gopher repetition and quality rules,
C4-style dirty-word counting, and token-distribution KL divergence to the corpus.

Llama 3 publishes no thresholds; the defaults are Gopher's (Rae et al. 2021, App. A)
and C4's. All rules share one tokenisation per document (`TextFeatures`), in words of the
document's own script (`pasture.data.segment`: dictionary words for Chinese, Japanese, Thai),
so the word-count thresholds carry over; the stop-word lists, the n-gram lengths of the
repetition rules and the KL model are per language.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from pasture.data.filters.base import RESOURCES, FilterError, TextFeatures, read_word_list
from pasture.documents import Document
from pasture.data.segment import unspaced_language

# Gopher's stop words for English, and the most frequent function words of a few
# other languages (for zh, ja and th as ICU segments them); the stop-word rule is
# skipped for languages not listed here.
STOP_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the be to of and that have with".split()),
    "fr": frozenset("le la les de des et un une est que".split()),
    "de": frozenset("der die das und ist zu den von mit ein".split()),
    "es": frozenset("el la los las de que y en un es".split()),
    "it": frozenset("il la di che e un una per con è".split()),
    "pt": frozenset("o a os as de que e um uma em".split()),
    "nl": frozenset("de het een en van is dat op te".split()),
    "zh": frozenset("的 了 是 在 和 有 也 就 都 这".split()),
    "ja": frozenset("の に は を が で て と た も".split()),
    "th": frozenset("ที่ และ ใน ของ การ เป็น มี ได้ ไม่ ให้".split()),
}

DEFAULT_TOP_NGRAM_MAX = {2: 0.20, 3: 0.18, 4: 0.16}
DEFAULT_DUP_NGRAM_MAX = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
# Where a language's words are shorter than English ones, a word n-gram spans less of a sentence, and
# set phrases fill Gopher's 5-grams: its n-gram rules use n x this factor there. Words per English word
# on the parallel texts of tests/multilingual_corpus.py: Japanese 1.4-1.5, whose set phrases also run
# long ("詳しくは…を参照してください" is 9 words, "see … for details" 4); Thai 1.1-1.2; Chinese 0.9-1.0.
DEFAULT_NGRAM_SCALE = {"ja": 2.0, "th": 1.25}

# random odd 64-bit multipliers: an n-gram's key is sum(id_k * M_k) mod 2**64
_NGRAM_MULTIPLIERS = np.random.default_rng(20240723).integers(1, 2**63, size=32, dtype=np.uint64) * np.uint64(2) + np.uint64(1)

ELLIPSIS_RE = re.compile(r"\.\.\.|…")
BULLETS = ("-", "*", "•", "‣", "◦", "▪", "●", "·", "–", "—")


def document_language(doc: Document) -> str:
    """The language rules are chosen by: the tag from language ID when there is one, else the language
    an unspaced script implies (a Thai page is not judged by English stop words), else English."""
    return doc.meta.get("language") or unspaced_language(doc.text) or "en"


@dataclass
class KLModel:
    """One language's corpus unigram distribution (add-one smoothed, last slot: every word outside
    `vocab`) and the KL divergence above which a document of that language is an outlier."""

    vocab: dict[str, int]
    log_q: np.ndarray
    max_kl: float | None


def dirty_word_languages() -> list[str]:
    """Languages with a shipped dirty-word list (`resources/dirty_words_<lang>.txt`)."""
    return sorted(p.name[len("dirty_words_") : -len(".txt")] for p in RESOURCES.glob("dirty_words_*.txt"))


def _as_ngram_thresholds(value: Mapping | None, name: str) -> dict[int, float]:
    if value is None:
        return {}
    try:
        return {int(n): float(v) for n, v in value.items() if v is not None}
    except (AttributeError, TypeError, ValueError):
        raise FilterError(f"heuristic.{name} must map n-gram sizes to fractions, e.g. {{2 = 0.20}}; got {value!r}") from None


def _kl(model: KLModel, lower_words: Sequence[str]) -> float:
    oov = len(model.vocab)
    idx = np.fromiter(map(model.vocab.get, lower_words, repeat(oov)), np.int64, len(lower_words))
    counts = np.bincount(idx, minlength=oov + 1)
    present = np.nonzero(counts)[0]
    p = counts[present] / len(idx)
    return float(np.sum(p * (np.log(p) - model.log_q[present])))


def ngram_keys(word_ids: np.ndarray, n: int) -> np.ndarray:
    """One 64-bit key per word n-gram (equal n-grams, equal keys; collisions ~2**-64)."""
    m = len(word_ids) - n + 1
    ids = word_ids.astype(np.uint64) + np.uint64(1)
    keys = np.zeros(m, dtype=np.uint64)
    for k in range(n):
        keys += ids[k : k + m] * _NGRAM_MULTIPLIERS[k]
    return keys


def duplicate_fraction(units: Sequence[str]) -> tuple[float, int]:
    """(fraction of units that repeat an earlier one, characters in those repeats)."""
    seen: set[str] = set()
    dup_count = dup_chars = 0
    for unit in units:
        if unit in seen:
            dup_count += 1
            dup_chars += len(unit)
        else:
            seen.add(unit)
    return (dup_count / len(units) if units else 0.0), dup_chars


def top_ngram_char_fraction(features: TextFeatures, n: int) -> float:
    """Characters covered by all occurrences of the most frequent word n-gram, over all
    word characters (Gopher). 0 when no n-gram occurs twice."""
    ids, lengths = features.word_ids, features.word_lengths
    if len(ids) < n:
        return 0.0
    keys = ngram_keys(ids, n)
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    best = counts.max()
    if best < 2:
        return 0.0
    cum = np.concatenate(([0], np.cumsum(lengths)))
    ngram_chars = cum[first + n] - cum[first]
    covered = (ngram_chars * counts)[counts == best].max()
    return float(covered / cum[-1])


def duplicate_ngram_char_fraction(features: TextFeatures, n: int) -> float:
    """Characters of words inside any word n-gram that occurs more than once, over all
    word characters (Gopher; overlapping occurrences counted once)."""
    ids, lengths = features.word_ids, features.word_lengths
    if len(ids) < n:
        return 0.0
    keys = ngram_keys(ids, n)
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    repeated_start = (counts[inverse] > 1).astype(np.int64)
    covered = np.convolve(repeated_start, np.ones(n, dtype=np.int64))[: len(ids)] > 0
    return float(lengths[covered].sum() / lengths.sum())


class HeuristicFilter:
    """Gopher quality + repetition rules, dirty words and KL outliers, in that order of cost.

    Every threshold can be set to None to switch its rule off. The KL rule needs
    `fit()` on a corpus sample (it learns the corpus unigram distribution and the
    KL percentile of each language), unless `max_kl` gives the threshold directly with
    `fit()` still providing the distributions. A language needs `kl_min_docs` sample
    documents of `kl_min_words`+ words for a model of its own; documents of rarer languages
    are not judged by KL (against another language's words, every document is an outlier).
    """

    name = "heuristic"

    def __init__(
        self,
        min_words: int | None = 50,
        max_words: int | None = 100_000,
        max_hash_ratio: float | None = 0.1,
        max_ellipsis_ratio: float | None = 0.1,
        max_bullet_lines: float | None = 0.9,
        max_ellipsis_lines: float | None = 0.3,
        min_alpha_words: float | None = 0.8,
        min_stop_words: int | None = 2,
        max_dup_line_frac: float | None = 0.30,
        max_dup_para_frac: float | None = 0.30,
        max_dup_line_chars: float | None = 0.20,
        max_dup_para_chars: float | None = 0.20,
        top_ngram_max: Mapping[int | str, float] | None = None,
        dup_ngram_max: Mapping[int | str, float] | None = None,
        ngram_scale: Mapping[str, float] | None = None,
        max_dirty_words: int | None = 2,
        dirty_word_languages: Sequence[str] = (),
        dirty_word_files: Sequence[str] = (),
        kl: bool = True,
        kl_percentile: float = 99.0,
        max_kl: float | None = None,
        kl_vocab_size: int = 50_000,
        kl_min_words: int = 20,
        kl_min_docs: int = 20,
    ) -> None:
        self.min_words = min_words
        self.max_words = max_words
        self.max_hash_ratio = max_hash_ratio
        self.max_ellipsis_ratio = max_ellipsis_ratio
        self.max_bullet_lines = max_bullet_lines
        self.max_ellipsis_lines = max_ellipsis_lines
        self.min_alpha_words = min_alpha_words
        self.min_stop_words = min_stop_words
        self.max_dup_line_frac = max_dup_line_frac
        self.max_dup_para_frac = max_dup_para_frac
        self.max_dup_line_chars = max_dup_line_chars
        self.max_dup_para_chars = max_dup_para_chars
        self.top_ngram_max = _as_ngram_thresholds(DEFAULT_TOP_NGRAM_MAX if top_ngram_max is None else top_ngram_max, "top_ngram_max")
        self.dup_ngram_max = _as_ngram_thresholds(DEFAULT_DUP_NGRAM_MAX if dup_ngram_max is None else dup_ngram_max, "dup_ngram_max")
        self.ngram_scale = dict(DEFAULT_NGRAM_SCALE if ngram_scale is None else ngram_scale)
        self.max_dirty_words = max_dirty_words
        self.dirty_words, self.dirty_phrases = self._load_dirty_words(dirty_word_languages, dirty_word_files)
        self.kl = kl
        if not 0 < kl_percentile <= 100:
            raise FilterError(f"heuristic.kl_percentile must be in (0, 100], got {kl_percentile}")
        self.kl_percentile = kl_percentile
        self.max_kl = max_kl
        self.kl_vocab_size = kl_vocab_size
        self.kl_min_words = kl_min_words
        self.kl_min_docs = kl_min_docs
        self.kl_models: dict[str, KLModel] | None = None  # by language, after fit()

    @staticmethod
    def _load_dirty_words(languages: Sequence[str], files: Sequence[str]) -> tuple[frozenset[str], re.Pattern | None]:
        available = dirty_word_languages()
        unknown = sorted(set(languages) - set(available))
        if unknown:
            raise FilterError(f"no dirty-word list for {', '.join(unknown)}; shipped lists: {', '.join(available)}")
        paths = [RESOURCES / f"dirty_words_{lang}.txt" for lang in (languages or available)] + list(files)
        entries = {w for p in paths for w in read_word_list(p)}
        single = frozenset(w for w in entries if " " not in w)
        phrases = sorted(w for w in entries if " " in w)
        pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, phrases)) + r")\b") if phrases else None
        return single, pattern

    # -- corpus statistics -------------------------------------------------

    def fit(self, docs: Iterable[Document]) -> None:
        """Learn each language's unigram distribution and KL drop threshold from a sample."""
        if not self.kl:
            return
        counts: dict[str, Counter[str]] = {}
        samples: dict[str, list[list[str]]] = {}
        for doc in docs:
            words = TextFeatures.of(doc).lower_words
            language = document_language(doc)
            counts.setdefault(language, Counter()).update(words)
            if len(words) >= self.kl_min_words:
                samples.setdefault(language, []).append(words)
        if not counts:
            raise FilterError("heuristic.fit got no words: the sample is empty")
        if self.max_kl is None and not samples:
            raise FilterError(f"heuristic.fit: no sample document has {self.kl_min_words}+ words to set the KL threshold")
        self.kl_models = {}
        for language, sample in samples.items():
            if len(sample) < self.kl_min_docs and len(samples) > 1:
                continue  # too few to judge this language; a single-language sample is always modelled
            vocab = [w for w, _ in counts[language].most_common(self.kl_vocab_size)]
            in_vocab = np.array([counts[language][w] for w in vocab], dtype=np.float64)
            out_of_vocab = sum(counts[language].values()) - in_vocab.sum()
            mass = np.append(in_vocab, out_of_vocab) + 1.0
            model = KLModel({w: i for i, w in enumerate(vocab)}, np.log(mass / mass.sum()), self.max_kl)
            if model.max_kl is None:
                model.max_kl = float(np.percentile([_kl(model, w) for w in sample], self.kl_percentile))
            self.kl_models[language] = model

    def _fitted(self) -> dict[str, KLModel]:
        if self.kl_models is None:
            raise FilterError("heuristic KL rule needs fit() on a corpus sample first (or set kl = false)")
        return self.kl_models

    def kl_divergence(self, lower_words: Sequence[str], language: str = "en") -> float:
        """KL(document unigram distribution || the language's corpus unigram distribution), in nats."""
        return _kl(self._fitted()[language], lower_words)

    # -- the filter ----------------------------------------------------------

    def process(self, doc: Document) -> str | None:
        f = TextFeatures.of(doc)
        n_words = len(f.words)
        if self.min_words is not None and n_words < self.min_words:
            return "too_few_words"
        if self.max_words is not None and n_words > self.max_words:
            return "too_many_words"
        if self.max_dirty_words is not None and self.count_dirty_words(f) > self.max_dirty_words:
            return "dirty_words"
        language = document_language(doc)
        reason = self._gopher_quality(f, language)
        if reason:
            return reason
        reason = self._gopher_repetition(f, language)
        if reason:
            return "gopher_repetition:" + reason
        if self.kl and n_words >= self.kl_min_words:
            model = self._fitted().get(language)
            if model is not None and _kl(model, f.lower_words) > model.max_kl:
                return "kl_outlier"
        return None

    def count_dirty_words(self, f: TextFeatures) -> int:
        dirty = self.dirty_words
        count = sum(1 for w in f.lower_words if w in dirty)
        if self.dirty_phrases is not None:
            count += len(self.dirty_phrases.findall(f.text.lower()))
        return count

    def _gopher_quality(self, f: TextFeatures, language: str) -> str | None:
        n_words = max(len(f.words), 1)
        if self.max_hash_ratio is not None and f.text.count("#") / n_words > self.max_hash_ratio:
            return "hash_ratio"
        if self.max_ellipsis_ratio is not None and len(ELLIPSIS_RE.findall(f.text)) / n_words > self.max_ellipsis_ratio:
            return "ellipsis_ratio"
        n_lines = max(len(f.lines), 1)
        if self.max_bullet_lines is not None and sum(line.startswith(BULLETS) for line in f.lines) / n_lines > self.max_bullet_lines:
            return "bullet_lines"
        if self.max_ellipsis_lines is not None and sum(line.endswith(("...", "…")) for line in f.lines) / n_lines > self.max_ellipsis_lines:
            return "ellipsis_lines"
        if self.min_alpha_words is not None and f.words and 1 - sum(map(str.isdigit, f.words)) / n_words < self.min_alpha_words:
            return "alpha_words"
        stop_words = STOP_WORDS.get(language)
        if self.min_stop_words is not None and stop_words is not None:
            found = 0
            for w in f.lower_words:
                if w in stop_words:
                    found += 1
                    if found >= self.min_stop_words:
                        break
            else:
                return "stop_words"
        return None

    def ngram_limits(self, language: str) -> tuple[dict[int, float], dict[int, float]]:
        """The (top, duplicate) n-gram thresholds for a language, n scaled by `ngram_scale`."""
        scale = self.ngram_scale.get(language, 1.0)
        return ({max(round(n * scale), 1): v for n, v in self.top_ngram_max.items()},
                {max(round(n * scale), 1): v for n, v in self.dup_ngram_max.items()})

    def _gopher_repetition(self, f: TextFeatures, language: str) -> str | None:
        n_chars = max(len(f.text), 1)
        para_frac, para_chars = duplicate_fraction(f.paragraphs)
        if self.max_dup_para_frac is not None and para_frac > self.max_dup_para_frac:
            return "dup_para_frac"
        if self.max_dup_para_chars is not None and para_chars / n_chars > self.max_dup_para_chars:
            return "dup_para_chars"
        line_frac, line_chars = duplicate_fraction(f.lines)
        if self.max_dup_line_frac is not None and line_frac > self.max_dup_line_frac:
            return "dup_line_frac"
        if self.max_dup_line_chars is not None and line_chars / n_chars > self.max_dup_line_chars:
            return "dup_line_chars"
        top, dup = self.ngram_limits(language)
        for n, limit in sorted(top.items()):
            if top_ngram_char_fraction(f, n) > limit:
                return f"top_{n}_gram"
        for n, limit in sorted(dup.items()):
            if duplicate_ngram_char_fraction(f, n) > limit:
                return f"dup_{n}_gram"
        return None

    def repetition_stats(self, doc: Document) -> dict[str, float]:
        """Every Gopher repetition measure of one document (for reports and tuning), n-grams as its language's rules use them."""
        f = TextFeatures.of(doc)
        n_chars = max(len(f.text), 1)
        para_frac, para_chars = duplicate_fraction(f.paragraphs)
        line_frac, line_chars = duplicate_fraction(f.lines)
        stats = {
            "dup_para_frac": para_frac,
            "dup_para_chars": para_chars / n_chars,
            "dup_line_frac": line_frac,
            "dup_line_chars": line_chars / n_chars,
        }
        top, dup = self.ngram_limits(document_language(doc))
        for n in sorted(top):
            stats[f"top_{n}_gram"] = top_ngram_char_fraction(f, n)
        for n in sorted(dup):
            stats[f"dup_{n}_gram"] = duplicate_ngram_char_fraction(f, n)
        return stats

"""Domain tagging for the data mix (Llama 3 §3.1.1-3.1.2): every kept document gets
`meta["domain"]` in general / code / math / multilingual.

Llama 3 used DistilRoBERTa classifiers trained on Llama 2 labels; we use cheap text
features (code: lines that look like code; math: LaTeX, math symbols, equations
and math vocabulary per word), optionally overridden by a trained classifier of
the same kind as the quality model (labels among general, code, math).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pasture.data.filters.base import FilterError, TextFeatures
from pasture.data.filters.language import bundled_model_path, identify_language
from pasture.data.filters.quality import TextClassifier
from pasture.documents import Document

DOMAINS = ("general", "code", "math", "multilingual")

CODE_LINE_RE = re.compile(
    r"""^\s*(?:
        def\s+\w+\s*\( | class\s+\w+.*[:{]\s*$ | import\s+[\w.]+ | from\s+[\w.]+\s+import\b
      | return\b | elif\b | else\s*[:{] | try\s*[:{] | except\b | catch\s*\( | finally\s*[:{]
      | \#include\b | \#define\b | (?:public|private|protected|static)\s | function\b
      | (?:var|let|const)\s+\w+\s*= | fn\s+\w+ | func\s+\w+ | package\s+\w+ | using\s+\w+
      | print\( | console\.\w+ | System\.\w+ | self\.\w+\s*=
      | (?:if|for|while|switch)\s*\(.*\)\s*\{?\s*$ | (?:if|for|while|with)\s.*:\s*$
      | //  | /\* | \*/
    )
    | [;{]\s*$ | ^\s*[})\]]+[;,)]*\s*$
    """,
    re.VERBOSE,
)
LATEX_RE = re.compile(
    r"\\(?:frac|dfrac|sum|int|iint|oint|sqrt|alpha|beta|gamma|delta|epsilon|theta|lambda|mu|pi|sigma|phi|omega|infty"
    r"|cdot|times|leq|geq|neq|le|ge|partial|nabla|mathbb|mathrm|mathcal|begin|end|left|right|lim|log|ln|sin|cos|tan"
    r"|binom|prod|approx|equiv|forall|exists|subset|cup|cap|to|rightarrow|vec|hat|bar|pm)\b|\$\$?|\\[(\[]"
)
MATH_SYMBOL_RE = re.compile(r"[∑∫∮√≤≥≠±∓×÷∞π∂∇∈∉∀∃≈≡∝⊂⊆∪∩→⇒⇔θαβγδλμσφω²³ⁿ₀₁₂]")
EQUATION_RE = re.compile(r"[\w)\]}]\s*(?:=|<|>|≤|≥)\s*[-\w(\\]|\d\s*[-+*/^×÷]\s*\d")
MATH_WORDS = frozenset(
    """theorem lemma proof corollary proposition equation equations integral derivative polynomial
    solve solution prime primes probability matrix vector function functions sum integer integers
    denominator numerator fraction quadratic algebra geometry triangle angle radius calculus limit
    converges inequality coefficient variable variables axiom definition modulo divisible""".split()
)


def code_score(f: TextFeatures) -> float:
    """Fraction of non-empty lines that look like source code."""
    if not f.lines:
        return 0.0
    return sum(1 for line in f.lines if CODE_LINE_RE.search(line)) / len(f.lines)


def math_score(f: TextFeatures) -> float:
    """Math markers (LaTeX, math symbols, equations) and math words per word."""
    n_words = max(len(f.words), 1)
    markers = len(LATEX_RE.findall(f.text)) + len(MATH_SYMBOL_RE.findall(f.text)) + len(EQUATION_RE.findall(f.text))
    vocabulary = sum(1 for w in f.lower_words if w in MATH_WORDS)
    return (markers + vocabulary) / n_words


class DomainTagger:
    """Tags `meta["domain"]`: code if `code_score >= code_threshold`, else math if
    `math_score >= math_threshold`, else multilingual if the document's language
    (from the language stage, or identified here) is not in `general_languages`,
    else general. Never drops a document."""

    name = "domains"

    def __init__(
        self,
        code_threshold: float = 0.3,
        math_threshold: float = 0.08,
        general_languages: Sequence[str] = ("en",),
        identify_language: bool = True,
        model: str | None = None,
        model_min_prob: float = 0.5,
    ) -> None:
        self.code_threshold = code_threshold
        self.math_threshold = math_threshold
        self.general_languages = frozenset(general_languages)
        self.identify_language = identify_language
        if identify_language:
            bundled_model_path()  # fail now if the language model is not installed
        self.classifier = TextClassifier.load(model) if model else None
        if self.classifier is not None:
            unknown = sorted(set(self.classifier.labels) - set(DOMAINS))
            if unknown:
                raise FilterError(f"domains.model {model}: labels {unknown} are not domains ({', '.join(DOMAINS)})")
        self.model_min_prob = model_min_prob

    def domain(self, doc: Document) -> str:
        f = TextFeatures.of(doc)
        code, math = code_score(f), math_score(f)
        doc.meta["domain_scores"] = {"code": round(code, 4), "math": round(math, 4)}
        if self.classifier is not None:
            probs = self.classifier.predict_proba_words(f.lower_words)
            best = int(probs.argmax())
            if probs[best] >= self.model_min_prob and self.classifier.labels[best] in ("code", "math"):
                return self.classifier.labels[best]
        if code >= self.code_threshold:
            return "code"
        if math >= self.math_threshold:
            return "math"
        language = doc.meta.get("language")
        if language is None and self.identify_language:
            language, score = identify_language(doc.text)
            doc.meta["language"], doc.meta["language_score"] = language, round(score, 4)
        if language is not None and language not in self.general_languages:
            return "multilingual"
        return "general"

    def process(self, doc: Document) -> str | None:
        doc.meta["domain"] = self.domain(doc)
        return None

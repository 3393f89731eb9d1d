"""Words of any script, for every rule that counts words: the Gopher and KL rules, dirty words,
the quality and domain classifiers (through `filters.base.TextFeatures`) and MinHash shingles.

Scripts written with spaces between words are split on word characters (combining marks
stay inside their word, so Devanagari or Thai vowel signs do not cut it). Scripts written
without spaces (Chinese, Japanese, Thai, Lao, Khmer, Myanmar) are cut into dictionary words
by ICU's word break iterator, as multilingual pipelines do per language instead of taking a
whole sentence for one "word" or every character for one.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from icu4py.breakers import WordBreaker

# scripts written without spaces between words; a run of these is handed to ICU whole
UNSPACED = (
    "\u0e00-\u0e7f"  # Thai
    "\u0e80-\u0eff"  # Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff\u19e0-\u19ff"  # Khmer
    "\u3005-\u3007\u3021-\u3029\u3031-\u3035\u303b\u303c"  # ideographic iteration and number marks
    "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f"  # Hiragana, Katakana (and halfwidth)
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"  # Han
)
_UNSPACED_RUN = re.compile(f"[{UNSPACED}]+")
_SCRIPT_OF_RUN_CHAR = [("\u3040", "\u30ff", "kana"), ("\u31f0", "\u31ff", "kana"), ("\uff66", "\uff9f", "kana"),
                       ("\u0e00", "\u0e7f", "th"), ("\u0e80", "\u0eff", "lo"), ("\u1000", "\u109f", "my"),
                       ("\u1780", "\u19ff", "km")]


def _combining_marks() -> str:
    """A regex class body of the combining marks (Mn, Mc, Me) of the Basic Multilingual Plane."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x10000):
        if unicodedata.category(chr(cp)) in ("Mn", "Mc", "Me"):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


_MARKS = _combining_marks()
# letters and digits with their combining marks (unrolled: marks are rare, so the common path is one class)
_PIECE = rf"[^\W_]+(?:[{_MARKS}]+[^\W_]*)*"
# a word of a spaced script, apostrophes inside ("don't")
SPACED_WORD = re.compile(rf"{_PIECE}(?:['’]{_PIECE})*")


def _unspaced_words(run: str) -> list[str]:
    return [w for w in WordBreaker(run, "und") if any(c.isalnum() for c in w)]


def words(text: str, spaced: Callable[[str], list[str]] = SPACED_WORD.findall) -> list[str]:
    """The words of `text` in order: runs of unspaced scripts cut by ICU, everything else by `spaced`
    (by default `SPACED_WORD`; MinHash passes its own normalising splitter)."""
    if not _UNSPACED_RUN.search(text):
        return spaced(text)
    out: list[str] = []
    pos = 0
    for m in _UNSPACED_RUN.finditer(text):
        out += spaced(text[pos : m.start()])
        out += _unspaced_words(m.group())
        pos = m.end()
    out += spaced(text[pos:])
    return out


def unspaced_language(text: str, sample_chars: int = 4000) -> str | None:
    """The language an unspaced script implies ("zh", "ja", "th", "lo", "km", "my"), when such runs hold
    at least a third of the letters in the first `sample_chars` characters; else None.

    Han alone is taken as Chinese; Han with kana as Japanese. For documents that carry no language tag.
    """
    sample = text[:sample_chars]
    counts: dict[str, int] = {}
    for run in _UNSPACED_RUN.findall(sample):
        for ch in run:
            script = next((name for lo, hi, name in _SCRIPT_OF_RUN_CHAR if lo <= ch <= hi), "han")
            counts[script] = counts.get(script, 0) + 1
    unspaced = sum(counts.values())
    letters = sum(ch.isalpha() for ch in sample)
    if not unspaced or unspaced * 3 < letters:
        return None
    if counts.get("kana", 0) * 20 >= unspaced:  # kana in 5% of the characters: Japanese, not Chinese
        return "ja"
    script = max(counts, key=counts.get)
    return {"han": "zh", "kana": "ja"}.get(script, script)

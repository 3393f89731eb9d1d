"""Metrics as the reference implementations compute them.

- Multiple choice (lm-eval): `acc` is the argmax of summed log-likelihoods, `acc_norm` divides
  each by its choice's length in characters, `acc_per_token` by its continuation's token count
  (nanochat's CORE / OLMES "per token").
- GSM8K (lm-eval): the answer after "#### " (strict-match) or the last number in the text
  (flexible-extract), compared after removing commas, dollar signs, everything up to "#### " and
  a final period, ignoring case.
- HumanEval: pass@k with Chen et al.'s unbiased estimator from n samples, c of them correct.
"""

from __future__ import annotations

import math
import re

import numpy as np


def argmax(values: list[float]) -> int:
    return int(np.argmax(np.asarray(values, dtype=np.float64)))


def choice_predictions(logliks: list[float], choice_chars: list[int], continuation_tokens: list[int]) -> dict[str, int]:
    """The choice each scoring rule picks: raw, per character, per token."""
    return {
        "acc": argmax(logliks),
        "acc_norm": argmax([ll / max(n, 1) for ll, n in zip(logliks, choice_chars)]),
        "acc_per_token": argmax([ll / max(n, 1) for ll, n in zip(logliks, continuation_tokens)]),
    }


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n)), as lm-eval reports it."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
GSM8K_IGNORE = [re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$")]
INVALID = "[invalid]"


def extract_answer(text: str, pattern: re.Pattern, last: bool) -> str:
    """lm-eval's regex filter: the first (or last) match, its first non-empty group, stripped."""
    matches = pattern.findall(text)
    if not matches:
        return INVALID
    match = matches[-1] if last else matches[0]
    if isinstance(match, tuple):
        groups = [m for m in match if m]
        if not groups:
            return INVALID
        match = groups[0]
    return match.strip()


def normalize_exact(text: str, ignore: list[re.Pattern] = GSM8K_IGNORE) -> str:
    for pattern in ignore:
        text = pattern.sub("", text)
    return text.lower()


def gsm8k_scores(generation: str, reference: str) -> dict[str, float]:
    """exact_match under lm-eval's two GSM8K filters."""
    gold = normalize_exact(reference)
    strict = extract_answer(generation, GSM8K_STRICT, last=False)
    flexible = extract_answer(generation, GSM8K_FLEXIBLE, last=True)
    return {
        "exact_match,strict-match": float(normalize_exact(strict) == gold),
        "exact_match,flexible-extract": float(normalize_exact(flexible) == gold),
    }


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c correct) passes:
    1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))

"""The pre-training data mix (Llama 3 §3.1.2-3.1.3): sample domain-tagged documents
to target proportions, and select a high-quality annealing set.

Llama 3's final mix is about 50% general knowledge, 25% math and reasoning, 17% code
and 8% multilingual tokens; its annealing data upsamples high-quality code and math.
`write_mix` reads the tagged documents twice: the first pass measures each domain,
the second writes each document 0, 1 or more times, so memory holds only one size
(and one quality score) per document, never the texts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from pasture.documents import Document, DocumentWriter, iter_documents
from pasture.errors import PastureError

LLAMA3_PROPORTIONS = {"general": 0.50, "math": 0.25, "code": 0.17, "multilingual": 0.08}
DEFAULT_DOMAIN = "general"  # for documents the domain tagger did not see


class MixError(PastureError):
    """Proportions or inputs that cannot make the requested mix."""


def utf8_bytes(doc: Document) -> int:
    return len(doc.text.encode("utf-8", errors="replace"))


def _normalise(proportions: Mapping[str, float]) -> dict[str, float]:
    if not proportions:
        raise MixError("proportions are empty; give each domain a share, e.g. general = 0.5")
    bad = {d: p for d, p in proportions.items() if not isinstance(p, (int, float)) or p < 0 or not math.isfinite(p)}
    if bad:
        raise MixError(f"proportions must be non-negative numbers, got {bad}")
    total = sum(proportions.values())
    if total <= 0:
        raise MixError("proportions sum to 0")
    return {d: p / total for d, p in proportions.items() if p > 0}


def _copies_for_target(sizes: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    """Copies of each document so the domain totals `target` (to within one document):
    whole passes over the domain, then documents in a random order until the rest is met."""
    available = int(sizes.sum())
    copies = np.zeros(len(sizes), dtype=np.int64)
    if available == 0 or target <= 0:
        return copies
    full_passes = int(target // available)
    copies += full_passes
    remainder = target - full_passes * available
    order = rng.permutation(len(sizes))
    cumulative = np.cumsum(sizes[order])
    # take documents while the running total stays nearest the remaining target
    n_take = int(np.searchsorted(cumulative, remainder))
    if n_take < len(order) and cumulative[n_take] - remainder < remainder - (cumulative[n_take - 1] if n_take else 0):
        n_take += 1
    copies[order[:n_take]] += 1
    return copies


def write_mix(
    input_paths: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    proportions: Mapping[str, float] | None = None,
    seed: int = 0,
    anneal: Mapping | None = None,
    total: float | None = None,
    measure: Callable[[Document], int] = utf8_bytes,
    allow_missing: bool = False,
    shuffle_buffer: int = 10_000,
    file_name: str = "mix.jsonl.zst",
) -> dict:
    """Write `out_dir/<file_name>`: the tagged documents of `input_paths` sampled to
    `proportions` of `measure` (UTF-8 bytes by default; pass a token counter for
    tokens) per `meta["domain"]`, and `out_dir/mix_stats.json`.

    `total` is the size of the mix; by default the largest mix that repeats no
    document. A larger `total` upsamples (documents repeat, their copies get ids
    `<id>#<k>` and `meta["mix_copy"] = k`). Sampling is deterministic in `seed`.
    Output is locally shuffled through a buffer of `shuffle_buffer` documents.

    `anneal` (keys `domains`, default ["code", "math"]; `top_fraction`, default 0.1;
    `min_score`; `file_name`, default "anneal.jsonl.zst") also writes the
    highest-`meta["quality_score"]` documents of those domains, the top fraction
    of each domain's size, as a separate annealing set.
    """
    proportions = _normalise(LLAMA3_PROPORTIONS if proportions is None else proportions)
    rng = np.random.default_rng(seed)

    # pass 1: size (and quality score) of every document, per domain
    sizes: dict[str, list[int]] = {}
    scores: dict[str, list[float]] = {}
    for doc in iter_documents(input_paths):
        domain = doc.meta.get("domain") or DEFAULT_DOMAIN
        sizes.setdefault(domain, []).append(measure(doc))
        score = doc.meta.get("quality_score")
        scores.setdefault(domain, []).append(float(score) if isinstance(score, (int, float)) else math.nan)
    size_arrays = {d: np.asarray(s, dtype=np.int64) for d, s in sizes.items()}
    available = {d: int(a.sum()) for d, a in size_arrays.items()}

    missing = sorted(d for d in proportions if available.get(d, 0) == 0)
    if missing and not allow_missing:
        raise MixError(
            f"proportions ask for {', '.join(f'{d} ({proportions[d]:.0%})' for d in missing)} but the inputs have no "
            f"documents tagged so (found: {', '.join(f'{d}={n}' for d, n in sorted(available.items())) or 'none'}); "
            "run the domains stage, change the proportions, or pass allow_missing=True"
        )
    targets_share = _normalise({d: p for d, p in proportions.items() if d not in missing})
    if total is None:  # largest mix in which no domain needs more than it has
        total = min(available[d] / p for d, p in targets_share.items())
    elif total <= 0:
        raise MixError(f"total must be positive, got {total}")
    targets = {d: p * total for d, p in targets_share.items()}
    copies = {d: _copies_for_target(a, targets.get(d, 0.0), rng) for d, a in size_arrays.items()}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    achieved = {d: int((copies[d] * size_arrays[d]).sum()) for d in size_arrays}
    written_docs = {d: int(copies[d].sum()) for d in size_arrays}
    _write_copies(input_paths, out / file_name, copies, rng, shuffle_buffer)

    mixed_total = sum(achieved.values())
    stats: dict = {
        "output": str(out / file_name),
        "seed": seed,
        "total_target": round(total),
        "total_written": mixed_total,
        "documents_written": sum(written_docs.values()),
        "missing_domains": missing,
        "domains": {},
    }
    for d in sorted(set(size_arrays) | set(proportions)):
        stats["domains"][d] = {
            "available": available.get(d, 0),
            "documents": len(size_arrays.get(d, ())),
            "target_proportion": round(targets_share.get(d, 0.0), 6),
            "achieved_proportion": round(achieved.get(d, 0) / mixed_total, 6) if mixed_total else 0.0,
            "target": round(targets.get(d, 0.0)),
            "written": achieved.get(d, 0),
            "documents_written": written_docs.get(d, 0),
            "epochs": round(achieved.get(d, 0) / available[d], 4) if available.get(d) else 0.0,
        }
    if anneal is not None:
        stats["anneal"] = _write_anneal(input_paths, out, size_arrays, scores, anneal)
    (out / "mix_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _write_copies(
    input_paths, path: Path, copies: Mapping[str, np.ndarray], rng: np.random.Generator, shuffle_buffer: int
) -> None:
    """Second pass: emit each document copies[domain][i] times through a shuffle buffer."""
    position = {d: 0 for d in copies}
    buffer: list[Document] = []
    with DocumentWriter(path) as writer:
        for doc in iter_documents(input_paths):
            domain = doc.meta.get("domain") or DEFAULT_DOMAIN
            n = int(copies[domain][position[domain]])
            position[domain] += 1
            for k in range(n):
                copy = doc if k == 0 else Document(f"{doc.id}#{k}", doc.text, doc.url, doc.source, dict(doc.meta, mix_copy=k))
                if len(buffer) < max(shuffle_buffer, 1):
                    buffer.append(copy)
                    continue
                i = int(rng.integers(len(buffer)))
                writer.write(buffer[i])
                buffer[i] = copy
        for i in rng.permutation(len(buffer)):
            writer.write(buffer[i])


def _write_anneal(input_paths, out: Path, size_arrays: Mapping[str, np.ndarray], scores: Mapping[str, list[float]], anneal: Mapping) -> dict:
    """Select the top `top_fraction` (by size) of each annealing domain by quality score."""
    unknown = sorted(set(anneal) - {"domains", "top_fraction", "min_score", "file_name"})
    if unknown:
        raise MixError(f"anneal: unknown key(s) {', '.join(unknown)}; known: domains, top_fraction, min_score, file_name")
    domains = list(anneal.get("domains", ["code", "math"]))
    top_fraction = float(anneal.get("top_fraction", 0.1))
    min_score = anneal.get("min_score")
    if not 0 < top_fraction <= 1:
        raise MixError(f"anneal.top_fraction must be in (0, 1], got {top_fraction}")
    selected: dict[str, np.ndarray] = {}
    summary: dict = {"domains": {}}
    for d in domains:
        if d not in size_arrays:
            raise MixError(f"anneal domain {d!r} has no documents (found: {', '.join(sorted(size_arrays))})")
        domain_scores = np.asarray(scores[d], dtype=np.float64)
        if np.isnan(domain_scores).all():
            raise MixError(f"anneal needs meta.quality_score on {d} documents: run the quality stage first")
        sizes = size_arrays[d]
        eligible = ~np.isnan(domain_scores)
        if min_score is not None:
            eligible &= domain_scores >= float(min_score)
        order = [i for i in np.argsort(-np.where(eligible, domain_scores, -np.inf), kind="stable") if eligible[i]]
        budget = top_fraction * sizes.sum()
        keep = np.zeros(len(sizes), dtype=bool)
        used = 0
        for i in order:
            if used >= budget:
                break
            keep[i] = True
            used += int(sizes[i])
        selected[d] = keep
        kept_scores = domain_scores[keep]
        summary["domains"][d] = {
            "documents": int(keep.sum()),
            "written": used,
            "min_quality_score": round(float(kept_scores.min()), 4) if keep.any() else None,
        }
    file_name = anneal.get("file_name", "anneal.jsonl.zst")
    position = {d: 0 for d in size_arrays}
    with DocumentWriter(out / file_name) as writer:
        for doc in iter_documents(input_paths):
            domain = doc.meta.get("domain") or DEFAULT_DOMAIN
            i = position[domain]
            position[domain] += 1
            if domain in selected and selected[domain][i]:
                writer.write(doc)
    summary["output"] = str(out / file_name)
    summary["documents_written"] = writer.count
    summary["top_fraction"] = top_fraction
    return summary

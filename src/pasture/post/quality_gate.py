"""`pasture quality-gate MODEL --quantize int8|fp8`: is the quantized model as good as the original?

Llama 3 (§6.2) found that benchmarks hide quantization damage, and compared the reward
model's score distributions of responses generated with and without FP8 instead. This gate
does both checks the serving issue asks for, each optional but at least one required:

- **Perplexity** on held-out text (`--text`: documents, JSONL/Parquet/plain text): the
  quantized model's must stay within `max_perplexity_change` (1%) of the original's, either way
  (a quantization that lowers it a lot has changed the model too).
- **Reward scores** (`--reward-model RM --prompts FILE`): both models answer the same prompts
  through the serving engine with the same sampling seeds; the reward model scores every
  answer. The gate fails when a two-sample Kolmogorov-Smirnov test tells the two score
  distributions apart at level `alpha`, or when the mean score moves by more than
  `max_score_shift` of the original scores' standard deviation (a shift too small for the KS
  test to see at this sample size, but systematic). The paired differences (same prompt, same
  seed) and the share of identical answers are reported too. An answer the reward model cannot
  score (an empty one) takes its pair out of the comparison; the gate fails when the quantized
  model gives more of them than the original. Shared seeds make the two samples
  positively correlated, which makes the KS test conservative: the mean-shift bound is the
  sharper check.

The report (`--out`, and printed) holds every number and each score, so a verdict can be
recomputed; the command exits 1 when the gate fails.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from pasture.documents import iter_documents
from pasture.errors import PastureError
from pasture.model import Transformer
from pasture.post.data import read_prompts
from pasture.post.models import load_encoder, load_model
from pasture.post.rejection import sample_responses
from pasture.post.reward_model import load_reward_model, score_responses
from pasture.runtime import resolve_device
from pasture.serve.quantize import QUANTIZATIONS, perplexity, quantize


@dataclass
class GateConfig:
    quantize: str = "int8"
    max_perplexity_change: float = 0.01  # the serving issue's bound: within 1% of the original
    alpha: float = 0.05  # KS test level
    max_score_shift: float = 0.1  # |mean change| as a share of the original scores' standard deviation
    max_text_tokens: int = 32768
    window: int = 512
    samples_per_prompt: int = 1
    temperature: float = 0.6  # Meta's sampling defaults for Llama 3 chat
    top_p: float = 0.9
    max_tokens: int = 256
    seed: int = 0
    batch_size: int = 16
    device: str = "auto"
    progress: bool = True


class GateError(PastureError):
    """A quality-gate run that cannot start: nothing to compare, or input it cannot read."""


def compare_scores(original: Sequence[float], quantized: Sequence[float], alpha: float,
                   max_score_shift: float) -> dict[str, Any]:
    """Two score samples of equal length (index i: the same prompt and seed) side by side, with the verdict."""
    a, b = torch.tensor(original, dtype=torch.float64), torch.tensor(quantized, dtype=torch.float64)
    if len(a) != len(b) or len(a) < 2:
        raise GateError(f"need two equally long score lists of at least 2, got {len(a)} and {len(b)}")
    ks = stats.ks_2samp(a.numpy(), b.numpy())
    difference = b - a
    spread = float(a.std())
    shift = float(difference.mean()) / spread if spread > 0 else (0.0 if float(difference.abs().max()) == 0 else math.inf)
    half_width = 1.96 * float(difference.std()) / math.sqrt(len(difference))
    return {
        "n": len(a), "original": _summary(a), "quantized": _summary(b),
        "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
        "mean_difference": float(difference.mean()),
        "mean_difference_95ci": [float(difference.mean()) - half_width, float(difference.mean()) + half_width],
        "shift_in_original_std": shift,
        "passed": bool(ks.pvalue >= alpha and abs(shift) <= max_score_shift),
    }


def _summary(scores: torch.Tensor) -> dict[str, float]:
    quantiles = torch.quantile(scores, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=scores.dtype)).tolist()
    return {"mean": float(scores.mean()), "std": float(scores.std()),
            **{f"p{q}": v for q, v in zip((5, 25, 50, 75, 95), quantiles)}}


def held_out_tokens(paths: Sequence[str], tokenizer, limit: int) -> torch.Tensor:
    """The documents of `paths`, each encoded as the model reads a document, concatenated up to `limit` tokens."""
    ids: list[int] = []
    for doc in iter_documents(paths):
        ids += tokenizer.encode(doc.text, bos=getattr(tokenizer, "add_bos", True))
        if len(ids) > limit:
            break
    if len(ids) < 2:
        raise GateError(f"the held-out text in {', '.join(paths)} has fewer than 2 tokens")
    return torch.tensor(ids[:limit + 1])


def quality_gate(model_spec: str, config: GateConfig, text: Sequence[str] = (), reward_spec: str | None = None,
                 prompts: Sequence[str] = (), tokenizer: str | None = None,
                 quantizer: Callable[[Transformer], Transformer] | None = None, log=print) -> dict[str, Any]:
    """Run the gate (module docstring); the report, with `passed`. `quantizer` gates a quantization of
    your own instead of `config.quantize` (which then only names it): it gets a copy of the model and
    returns it quantized."""
    if quantizer is None and (config.quantize not in QUANTIZATIONS or config.quantize == "none"):
        raise GateError(f"--quantize must be one of {', '.join(QUANTIZATIONS[1:])}, got {config.quantize!r}")
    if not text and not reward_spec:
        raise GateError("nothing to compare: pass held-out --text, or --reward-model with --prompts, or both")
    if bool(reward_spec) != bool(prompts):
        raise GateError("--reward-model and --prompts go together: the reward model scores answers to the prompts")
    device = resolve_device(config.device)
    encoder = load_encoder(model_spec, tokenizer)
    original, _ = load_model(model_spec, device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    original.eval()
    try:
        quantized = (quantizer or partial(quantize, method=config.quantize))(copy.deepcopy(original)).eval()
    except ValueError as e:
        raise GateError(str(e)) from None
    report: dict[str, Any] = {"model": str(model_spec), "config": asdict(config)}

    if text:
        tokens = held_out_tokens(text, encoder.tokenizer, config.max_text_tokens).to(device)
        log(f"perplexity over {len(tokens) - 1} held-out tokens, original then {config.quantize}")
        before, after = (perplexity(m, tokens, config.window, progress=name if config.progress else None)
                         for name, m in (("original", original), (config.quantize, quantized)))
        change = after / before - 1
        report["perplexity"] = {"tokens": len(tokens) - 1, "original": before, "quantized": after,
                                "relative_change": change, "passed": abs(change) <= config.max_perplexity_change}
        log(f"perplexity {before:.4f} -> {after:.4f} ({change:+.2%})")

    if reward_spec:
        conversations, skipped = read_prompts(prompts)
        answers = {name: _answer(model, encoder, conversations, config)
                   for name, model in (("original", original), ("quantized", quantized))}
        del original, quantized
        rm, rm_encoder = load_reward_model(reward_spec, device=device), load_encoder(reward_spec)
        repeated = [c for c in conversations for _ in range(config.samples_per_prompt)]
        scores = {name: score_responses(rm, rm_encoder, repeated, [{"role": "assistant", "content": a} for a in texts])
                  for name, texts in answers.items()}
        # an empty answer cannot be scored: its pair leaves the comparison, and the count is kept
        unscored = {name: sum(not math.isfinite(x) for x in values) for name, values in scores.items()}
        kept = [i for i in range(len(repeated)) if all(math.isfinite(scores[name][i]) for name in scores)]
        if len(kept) < 2:
            comparison = {"n": len(kept), "passed": False}
        else:
            comparison = compare_scores([scores["original"][i] for i in kept], [scores["quantized"][i] for i in kept],
                                        config.alpha, config.max_score_shift)
            comparison["passed"] &= unscored["quantized"] <= unscored["original"]
        identical = sum(x == y for x, y in zip(answers["original"], answers["quantized"]))
        report["reward_scores"] = {"reward_model": str(reward_spec), "prompts": len(conversations),
                                   "prompts_skipped": skipped.as_dict()["skipped"],
                                   "identical_answers": identical / len(repeated), "unscored": unscored,
                                   **comparison,
                                   "scores": {name: [x if math.isfinite(x) else None for x in values]
                                              for name, values in scores.items()}}
        if "ks_statistic" in comparison:
            log(f"reward scores over {comparison['n']} answers: mean {comparison['original']['mean']:.4f} -> "
                f"{comparison['quantized']['mean']:.4f}, KS D {comparison['ks_statistic']:.3f} "
                f"(p {comparison['ks_pvalue']:.3f}), shift {comparison['shift_in_original_std']:+.3f} std")
        log(f"answers the reward model could not score: {unscored['original']} original, {unscored['quantized']} "
            f"{config.quantize}")

    report["passed"] = all(part["passed"] for key, part in report.items() if key in ("perplexity", "reward_scores"))
    return report


def _answer(model, encoder, conversations: list, config: GateConfig) -> list[str]:
    results = sample_responses(model, encoder, conversations, config.samples_per_prompt,
                               temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_tokens,
                               seed=config.seed, batch_size=config.batch_size, progress=config.progress)
    return [encoder.decode(r.token_ids).strip() for r in results]


def write_report(report: dict[str, Any], out: str | Path) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")

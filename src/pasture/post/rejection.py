"""`pasture rejection-sample MODEL --reward RM --prompts FILE --k K --out FILE` (Llama 3 §4.2.2).

For each prompt, K responses are sampled through the serving engine (continuous
batching, one seed per sample), each is scored by the reward model, and:

- the best becomes a new SFT record (`--out`, SFT format plus `score`, `scores`);
- the best against the worst becomes a preference pair (`--pairs-out`, default
  `<out>.pairs.jsonl`, with `chosen_score` / `rejected_score`).

Samples cut off by `--max-tokens` are never kept (a kept one would teach the model not
to stop); prompts whose samples were all cut off or all identical are counted and skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pasture.post.data import read_prompts, write_records
from pasture.post.models import load_encoder, load_model
from pasture.post.reward_model import load_reward_model, score_responses
from pasture.runtime import resolve_device
from pasture.model import Transformer
from pasture.post.encode import ChatEncoder, Messages
from pasture.serve import Engine, GenerationResult, SamplingParams


@dataclass
class RejectionConfig:
    k: int = 4
    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int = 256
    system_prompts: list[str] = field(default_factory=list)  # cycled over prompts without a system message
    seed: int = 0
    batch_size: int = 16  # sequences the engine decodes together
    device: str = "auto"
    progress: bool = True


def with_system_prompt(messages: list[dict[str, Any]], index: int, system_prompts: list[str]) -> list[dict[str, Any]]:
    """Prompt `index` with the next system prompt in turn, unless it has its own."""
    if not system_prompts or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system_prompts[index % len(system_prompts)]}, *messages]


def default_pairs_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".jsonl") + ".pairs.jsonl")


def sample_responses(model: Transformer, encoder: ChatEncoder, prompts: list[Messages], k: int, *, temperature: float,
                     top_p: float, max_tokens: int, seed: int, batch_size: int,
                     progress: bool = True) -> list[GenerationResult]:
    """`k` responses to each prompt through the serving engine, prompt by prompt; sample j of prompt i
    has its own seed, the same for every model given the same prompts and `seed`."""
    requests, params = [], []
    for i, prompt in enumerate(prompts):
        ids = encoder.encode(prompt, add_generation_prompt=True).tokens
        for j in range(k):
            requests.append(ids)
            params.append(SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                         seed=seed * 1_000_003 + i * k + j))
    with Engine(model, max_batch_size=batch_size, stop_token_ids=encoder.stop_ids) as engine:
        return engine.generate(requests, params, progress=progress)


def rejection_sample(model_spec: str, reward_spec: str, prompts_path: list[str], out: str | Path,
                     config: RejectionConfig, pairs_out: str | Path | None = None, tokenizer: str | None = None,
                     log=print) -> dict[str, Any]:
    """Sample, score, keep the best (SFT) and best-vs-worst (preferences); returns the counts."""
    device = resolve_device(config.device)
    prompts, skipped = read_prompts(prompts_path)
    prompts = [with_system_prompt(p, i, config.system_prompts) for i, p in enumerate(prompts)]
    encoder = load_encoder(model_spec, tokenizer)
    model, _ = load_model(model_spec, device=device)
    log(f"sampling {config.k} responses for each of {len(prompts)} prompts")
    results = sample_responses(model.eval(), encoder, prompts, config.k, temperature=config.temperature,
                               top_p=config.top_p, max_tokens=config.max_tokens, seed=config.seed,
                               batch_size=config.batch_size, progress=config.progress)
    del model
    responses = [{"role": "assistant", "content": encoder.decode(r.token_ids).strip()} for r in results]
    finished = [r.finish_reason == "stop" for r in results]

    rm = load_reward_model(reward_spec, device=device)
    rm_encoder = load_encoder(reward_spec)
    scores = score_responses(rm, rm_encoder, [p for p in prompts for _ in range(config.k)], responses)
    del rm

    counts: Counter = Counter()
    sft_records, pair_records = [], []
    for i, prompt in enumerate(prompts):
        span = range(i * config.k, (i + 1) * config.k)
        candidates = [n for n in span if finished[n] and responses[n]["content"] and scores[n] > float("-inf")]
        counts["cut_off_samples"] += sum(not finished[n] for n in span)
        if not candidates:
            counts["prompts_without_finished_sample"] += 1
            continue
        best = max(candidates, key=lambda n: scores[n])
        worst = min(candidates, key=lambda n: scores[n])
        sft_records.append({"messages": [*prompt, responses[best]], "score": scores[best],
                            "scores": [scores[n] for n in span]})
        if responses[best]["content"] == responses[worst]["content"]:
            counts["prompts_with_identical_samples"] += 1
            continue
        pair_records.append({"messages": prompt, "chosen": responses[best], "rejected": responses[worst],
                             "chosen_score": scores[best], "rejected_score": scores[worst]})
    pairs_out = Path(pairs_out) if pairs_out else default_pairs_path(out)
    write_records(out, sft_records)
    write_records(pairs_out, pair_records)
    stats = {"prompts": len(prompts), "samples": len(results), "sft_records": len(sft_records),
             "preference_pairs": len(pair_records), "prompts_skipped": skipped.as_dict()["skipped"], **counts,
             "mean_best_score": _mean([r["score"] for r in sft_records]),
             "mean_score": _mean([s for s in scores if s > float("-inf")]), "out": str(out), "pairs_out": str(pairs_out)}
    Path(str(out) + ".stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    log(f"kept {len(sft_records)} SFT records -> {out}, {len(pair_records)} pairs -> {pairs_out}")
    return stats


def _mean(values: list[float]) -> float | None:
    return float(torch.tensor(values).mean()) if values else None

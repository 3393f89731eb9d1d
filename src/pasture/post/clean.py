"""`pasture clean-sft`: SFT data cleaning as Llama 3 §4.2.3, every removal counted with its reason.

1. Rules: responses with too many emojis or exclamation marks are dropped; responses
   opening with an overused apologetic phrase ("I'm sorry", "I apologize", "As an AI") are
   rebalanced down to `max_apology_fraction` of the data (the lowest-scored go first).
2. Quality: a reward model scores each conversation's last assistant turn; the top
   `keep_fraction` (a quartile) is kept.
3. Semantic de-duplication: conversations are embedded with a model's own mean-pooled
   final hidden states, clustered (k-means, √n clusters), sorted by quality within each
   cluster, and kept greedily unless their cosine similarity to one already kept in the
   cluster exceeds `cosine_threshold`.

Writes OUT (kept records), OUT.rejects.jsonl (dropped ones, `reject_reason` and, for
duplicates, `duplicate_of`), OUT.stats.json (counts per step and reason).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pasture.post.data import read_conversations, write_records
from pasture.post.encode import ChatEncoder
from pasture.post.models import load_encoder, load_model
from pasture.post.reward_model import load_reward_model, score_responses
from pasture.runtime import resolve_device

# pictographs, dingbats, symbols and flags: what "emoji" means in chat data
EMOJI = re.compile("[\U0001F300-\U0001FAFF\U00002600-\U000027BF\U0001F1E6-\U0001F1FF\U0001F000-\U0001F2FF]")
APOLOGY = re.compile(r"^\W*(i'?m (so |very |really )?sorry|i apologi[sz]e|my apologies|as an ai\b|"
                     r"unfortunately,? i (can(no|')t|am unable))", re.IGNORECASE)


@dataclass
class CleanConfig:
    max_emojis: int = 3  # per response
    max_exclamations: int = 3
    max_apology_fraction: float = 0.05
    keep_fraction: float = 0.25  # quality: the top quartile
    cosine_threshold: float = 0.95
    max_len: int = 2048  # tokens embedded / scored per conversation
    seed: int = 0
    device: str = "auto"


def _responses(messages: list[dict[str, Any]]) -> list[str]:
    return [str(m.get("content") or "") for m in messages if m["role"] == "assistant"]


def rule_reason(messages: list[dict[str, Any]], config: CleanConfig) -> str | None:
    """Why the rules drop a conversation, or None."""
    for text in _responses(messages):
        if len(EMOJI.findall(text)) > config.max_emojis:
            return "excess_emojis"
        if text.count("!") > config.max_exclamations:
            return "excess_exclamation_marks"
    return None


def is_apologetic(messages: list[dict[str, Any]]) -> bool:
    return any(APOLOGY.match(text) for text in _responses(messages))


def kmeans(x: torch.Tensor, k: int, seed: int, iterations: int = 20) -> torch.Tensor:
    """Cluster of each row of unit vectors `x` (spherical k-means)."""
    generator = torch.Generator().manual_seed(seed)
    centers = x[torch.randperm(len(x), generator=generator)[:k]].clone()
    assign = torch.zeros(len(x), dtype=torch.long)
    for _ in range(iterations):
        assign = (x @ centers.T).argmax(1)
        for c in range(k):
            members = x[assign == c]
            if len(members):
                centers[c] = torch.nn.functional.normalize(members.mean(0), dim=0)
    return assign


@torch.no_grad()
def embed(model: torch.nn.Module, encoder: ChatEncoder, conversations: list[list[dict[str, Any]]],
          max_len: int) -> torch.Tensor:
    """Unit-length mean-pooled final hidden states, one row per conversation."""
    device = model.tok_embeddings.weight.device
    rows = []
    for messages in conversations:
        tokens = torch.tensor([encoder.encode(messages).tokens[:max_len]], device=device)
        rows.append(model(tokens, return_hidden=True)[0].float().mean(0).cpu())
    return torch.nn.functional.normalize(torch.stack(rows), dim=1)


def semantic_dedup(vectors: torch.Tensor, quality: list[float], threshold: float, seed: int) -> dict[int, int]:
    """{dropped index: the kept index it duplicates}; within each cluster, best quality first."""
    k = max(1, int(math.sqrt(len(vectors))))
    clusters = kmeans(vectors, k, seed)
    dropped: dict[int, int] = {}
    for c in range(k):
        members = sorted((int(i) for i in (clusters == c).nonzero()[:, 0]), key=lambda i: (-quality[i], i))
        kept: list[int] = []
        for i in members:
            if kept:
                sims = vectors[kept] @ vectors[i]
                best = int(sims.argmax())
                if float(sims[best]) > threshold:
                    dropped[i] = kept[best]
                    continue
            kept.append(i)
    return dropped


def clean_sft(data: list[str], out: str | Path, config: CleanConfig, reward_spec: str | None = None,
              embed_spec: str | None = None, log=print) -> dict[str, Any]:
    """Run the steps (quality and dedup only with a reward model / embedding model); the counts."""
    device = resolve_device(config.device)
    conversations, skipped = read_conversations(data)
    alive = list(range(len(conversations)))
    rejects: dict[int, dict[str, Any]] = {}
    stats: dict[str, Any] = {"read": skipped.as_dict(), "steps": {}}

    def drop(step: str, reasons: dict[int, str], extra: dict[int, dict[str, Any]] | None = None) -> None:
        nonlocal alive
        for i, reason in reasons.items():
            rejects[i] = {"reject_reason": reason, **(extra or {}).get(i, {})}
        alive = [i for i in alive if i not in reasons]
        stats["steps"][step] = {"removed": dict(Counter(reasons.values())), "kept": len(alive)}
        log(f"{step}: removed {len(reasons)}, {len(alive)} left")

    quality = [0.0] * len(conversations)
    if reward_spec:
        rm = load_reward_model(reward_spec, device=device)
        rm_encoder = load_encoder(reward_spec)
        prompts = [c[:max(i for i, m in enumerate(c) if m["role"] == "assistant")] for c in conversations]
        quality = score_responses(rm, rm_encoder, prompts, [[m for m in c if m["role"] == "assistant"][-1]
                                                             for c in conversations], config.max_len)
        del rm
    drop("rules", {i: r for i in alive if (r := rule_reason(conversations[i], config))})
    apologetic = sorted((i for i in alive if is_apologetic(conversations[i])), key=lambda i: (-quality[i], i))
    allowed = int(config.max_apology_fraction * len(alive))
    drop("apology_rebalance", {i: "overused_apology" for i in apologetic[allowed:]})
    if reward_spec:
        ranked = sorted(alive, key=lambda i: (-quality[i], i))
        keep = max(1, math.ceil(config.keep_fraction * len(ranked)))
        drop("quality", {i: "low_reward_quality" for i in ranked[keep:]})
    if embed_spec and len(alive) > 1:
        model, _ = load_model(embed_spec, device=device)
        vectors = embed(model.eval(), load_encoder(embed_spec), [conversations[i] for i in alive], config.max_len)
        del model
        duplicates = semantic_dedup(vectors, [quality[i] for i in alive], config.cosine_threshold, config.seed)
        drop("semantic_dedup", {alive[i]: "semantic_duplicate" for i in duplicates},
             {alive[i]: {"duplicate_of": alive[j]} for i, j in duplicates.items()})
    write_records(out, ({"messages": conversations[i], **({"score": quality[i]} if reward_spec else {})}
                        for i in alive))
    write_records(Path(str(out).removesuffix(".jsonl") + ".rejects.jsonl"),
                  ({"messages": conversations[i], **reason, **({"score": quality[i]} if reward_spec else {})}
                   for i, reason in sorted(rejects.items())))
    stats["kept"] = len(alive)
    Path(str(out).removesuffix(".jsonl") + ".stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats

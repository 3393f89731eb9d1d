"""Sampling with a KV cache: temperature, top-p, max tokens, stop tokens.

The prompt is run once (prefill), then one token at a time reads the cached keys and
values; greedy decoding gives exactly what repeated cache-free forwards give.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pasture.model.llama import KVCache, Transformer


@dataclass
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.6  # 0 means greedy
    top_p: float = 0.9
    seed: int | None = 0


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """One token id per row of `logits` [B, vocab]."""
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # drop a token when the mass before it already exceeds top_p (Meta's rule)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs > params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt_ids: list[int],
    params: SamplingParams,
    stop_tokens: set[int] | frozenset[int] = frozenset(),
    use_cache: bool = True,
) -> list[int]:
    """Continue `prompt_ids`; returns the new ids (the stop token, if hit, excluded)."""
    if not prompt_ids:
        raise ValueError("the prompt is empty; generation needs at least one token (e.g. <|begin_of_text|>)")
    device = model.tok_embeddings.weight.device
    limit = min(model.config.max_seq_len, len(prompt_ids) + params.max_tokens)
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    tokens = torch.tensor([prompt_ids], device=device)
    cache = None
    if use_cache:
        dtype = model.tok_embeddings.weight.dtype
        cache = KVCache(model.config, batch_size=1, max_len=limit, dtype=dtype, device=device)
    out: list[int] = []
    next_input = tokens
    for _ in range(limit - len(prompt_ids)):
        logits = model(next_input, cache=cache) if use_cache else model(tokens)
        token = sample_next(logits[:, -1], params, generator)
        token_id = int(token.item())
        if token_id in stop_tokens:
            break
        out.append(token_id)
        next_input = token.view(1, 1)
        if not use_cache:
            tokens = torch.cat([tokens, next_input], dim=1)
    return out

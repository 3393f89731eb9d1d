"""The one Llama 3 transformer used by every stage.

Numerics follow Meta's reference (`llama-models/models/llama3/model.py`): pre-norm
residual blocks, RMSNorm computed in fp32, SwiGLU, grouped-query attention with
repeat-interleave head sharing, rotary embeddings with theta 500k and the Llama 3.1
frequency scaling, no biases, no dropout.

Two deliberate layout choices, both converted away in `convert.py`:
- Rotary embeddings rotate the two halves of each head (`rotate_half`, the Hugging
  Face convention) instead of Meta's interleaved pairs. Half rotation needs no
  complex numbers and compiles well; Meta weights get the q/k row permutation on load.
- Packed training sequences carry `document_ids`. Attention never crosses a document
  boundary, and rotary positions restart at 0 for every document, so a document sees
  exactly the positions it would see alone at inference time.

This file knows nothing of parallelism, checkpoints or data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pasture.model.config import ModelConfig

ATTENTION_BACKENDS = ("auto", "sdpa", "flex")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        out = normed.type_as(x) * self.weight
        if torch.is_autocast_enabled(x.device.type):
            # every consumer is a matmul that would cast it: cast once, so the q/k/v (or
            # w1/w3) projections share one low-precision copy instead of keeping one each
            out = out.to(torch.get_autocast_dtype(x.device.type))
        return out

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def rope_inverse_frequencies(config: ModelConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """Inverse frequencies 1/theta^(2i/d), with the Llama 3.1 piecewise scaling when configured."""
    hd = config.head_dim
    freqs = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
    scaling = config.rope_scaling
    if scaling is None:
        return freqs
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / freqs
    scaled = torch.where(wavelen > low_freq_wavelen, freqs / scaling.factor, freqs)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(in_band, blended, scaled)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [B, heads, T, hd] by angles given as cos/sin [B, 1, T, hd], in fp32."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).type_as(x)


def positions_from_document_ids(document_ids: torch.Tensor) -> torch.Tensor:
    """Position of every token inside its own document: restarts at 0 where the id changes."""
    B, T = document_ids.shape
    index = torch.arange(T, device=document_ids.device).expand(B, T)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    start_index = torch.where(starts, index, torch.zeros_like(index))
    return index - torch.cummax(start_index, dim=1).values


@dataclass
class AttentionMask:
    """What every layer needs to mask attention in one forward pass, built once per pass."""

    backend: str  # "causal" | "dense" | "flex"
    dense: torch.Tensor | None = None  # bool [B, 1, Tq, Tk], True where attention is allowed
    block_mask: object | None = None  # FlexAttention BlockMask
    # When the queries are a slice of a longer sequence (the sequence is split across
    # devices), this returns that whole sequence's keys and values, in order, from this
    # slice's; the mask above then spans the whole sequence's keys.
    gather_keys_values: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None


_compiled_flex = None


def _flex_attention(q, k, v, block_mask, enable_gqa):
    """FlexAttention, compiled on CUDA (its fast path) and eager elsewhere (a correct reference path)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)
    if torch.is_grad_enabled() and q.requires_grad:
        raise ValueError("FlexAttention has no backward pass on CPU; train with attention_backend='auto' or 'sdpa'")
    return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)


def build_attention_mask(
    document_ids: torch.Tensor | None,
    seq_len: int,
    backend: str,
    device: torch.device,
    cache_len: int = 0,
    query_positions: torch.Tensor | None = None,
) -> AttentionMask:
    """Causal attention, restricted to one document when `document_ids` is given.

    query_positions: [Tq] indices into the sequence of the queries when they are only part
        of it (context parallelism); keys then span the whole sequence of `document_ids`
        (or `seq_len` positions without them).
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {ATTENTION_BACKENDS}")
    if cache_len and (document_ids is not None or query_positions is not None):
        raise ValueError("a KV cache attends causally over one document; generate one document at a time")
    if document_ids is None and query_positions is None:
        if cache_len == 0:
            return AttentionMask("causal")
        q_pos = torch.arange(seq_len, device=device)[:, None] + cache_len
        k_pos = torch.arange(cache_len + seq_len, device=device)[None, :]
        return AttentionMask("dense", dense=(k_pos <= q_pos)[None, None])
    key_len = document_ids.shape[1] if document_ids is not None else seq_len
    docs = document_ids
    if backend == "flex" or (backend == "auto" and device.type == "cuda"):
        from torch.nn.attention.flex_attention import create_block_mask

        def document_causal(b, h, q_idx, kv_idx):
            q = q_idx if query_positions is None else query_positions[q_idx]
            allowed = q >= kv_idx
            return allowed if docs is None else allowed & (docs[b, q] == docs[b, kv_idx])

        n_queries = key_len if query_positions is None else len(query_positions)
        batch = None if docs is None else docs.shape[0]
        block_mask = create_block_mask(document_causal, batch, None, n_queries, key_len, device=device)
        return AttentionMask("flex", block_mask=block_mask)
    keys = torch.arange(key_len, device=device)
    queries = keys if query_positions is None else query_positions
    allowed = (keys[None, :] <= queries[:, None])[None]  # [1, Tq, Tk]
    if docs is not None:
        allowed = allowed & (docs[:, queries, None] == docs[:, None, :])
    return AttentionMask("dense", dense=allowed[:, None])


class KVCache(nn.Module):
    """Pre-allocated keys and values for incremental decoding, one slot per layer."""

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        shape = (config.n_layers, batch_size, config.n_kv_heads, max_len, config.head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked for {end}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * self.head_dim, config.dim, bias=False)

    def forward(self, x, cos, sin, mask: AttentionMask, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_id, k, v)
        if mask.gather_keys_values is not None:
            k, v = mask.gather_keys_values(k, v)
        gqa = self.n_kv_heads != self.n_heads
        if mask.backend == "flex":
            out = _flex_attention(q, k, v, mask.block_mask, gqa)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask.dense, is_causal=mask.backend == "causal", enable_gqa=gqa
            )
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.ffn_hidden_dim
        self.w1 = nn.Linear(config.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, config.dim, bias=False)
        self.w3 = nn.Linear(config.dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.attention = Attention(config, layer_id)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)

    def forward(self, x, cos, sin, mask: AttentionMask, cache: KVCache | None = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Llama 3. `forward(tokens)` returns fp32 logits [batch, seq, vocab].

    A copy holding only some of the layers runs the same forward (a pipeline stage): without
    `tok_embeddings` it takes hidden states [batch, seq, dim] as input, and without `norm`
    it returns the residual stream after its last layer.
    """

    def __init__(self, config: ModelConfig, attention_backend: str = "auto") -> None:
        super().__init__()
        if attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {attention_backend!r}; choose one of {ATTENTION_BACKENDS}")
        self.config = config
        self.attention_backend = attention_backend
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.register_buffer("inv_freq", rope_inverse_frequencies(config), persistent=False)
        if self.inv_freq.device.type != "meta":
            self.init_weights()

    def init_weights(self, buffer_device: torch.device | str | None = None) -> None:
        """Initialise (or re-initialise after `to_empty`) all parameters and buffers.

        Normal(0, 0.02) everywhere, with the residual-branch outputs (wo, w2) scaled by
        1/sqrt(2 * n_layers) so the residual stream's variance does not grow with depth.
        """
        self.init_rope(buffer_device or self.tok_embeddings.weight.device)
        std = 0.02
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        nn.init.normal_(self.tok_embeddings.weight, std=std)
        for layer in self.layers:
            for lin in (layer.attention.wq, layer.attention.wk, layer.attention.wv, layer.feed_forward.w1, layer.feed_forward.w3):
                nn.init.normal_(lin.weight, std=std)
            nn.init.normal_(layer.attention.wo.weight, std=residual_std)
            nn.init.normal_(layer.feed_forward.w2.weight, std=residual_std)
            layer.attention_norm.reset_parameters()
            layer.ffn_norm.reset_parameters()
        self.norm.reset_parameters()
        if not self.config.tie_embeddings:
            nn.init.normal_(self.output.weight, std=self.config.dim**-0.5)

    def init_rope(self, device: torch.device | str) -> None:
        """(Re)compute the rotary frequency buffer, which checkpoints do not store."""
        self.inv_freq = rope_inverse_frequencies(self.config, device=device)

    def _apply(self, fn, recurse=True):
        """`.to(dtype)`, `.bfloat16()` and the like cast every floating buffer; the rotary
        frequencies must stay fp32 (in bf16, angles at position 8K are off by radians), so
        they are recomputed in fp32 on whatever device the cast left them."""
        super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32:
            self.init_rope(self.inv_freq.device)
        return self

    def rope_angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [B, 1, T, head_dim] for integer positions [B, T]."""
        angles = positions.float()[..., None] * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)[:, None]
        return angles.cos(), angles.sin()

    def forward(
        self,
        tokens: torch.Tensor,
        document_ids: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        return_hidden: bool = False,
        positions: torch.Tensor | None = None,
        mask: AttentionMask | None = None,
    ) -> torch.Tensor:
        """Logits for `tokens` [B, T] (hidden states [B, T, dim] when this copy has no embeddings).

        document_ids: optional [B, T] integer ids, equal for the tokens of one packed
            document; attention stays inside a document and positions restart per document.
        cache: a KVCache to read earlier positions from and append these to.
        return_hidden: return the final normalised hidden states [B, T, dim] instead of
            logits, so a training loss can project to the vocabulary in chunks.
        positions: rotary positions [B, T] when `tokens` is a slice of longer sequences
            (a sequence split across devices); default: from document_ids, else 0..T-1.
        mask: a prebuilt attention mask, for a slice of longer sequences (with `positions`);
            default: built from document_ids.
        """
        B, T = tokens.shape[:2]
        cache_len = cache.length if cache is not None else 0
        if document_ids is not None and document_ids.shape != tokens.shape[:2]:
            raise ValueError(f"document_ids shape {tuple(document_ids.shape)} != tokens shape {tuple(tokens.shape)}")
        if positions is None and document_ids is not None:
            positions = positions_from_document_ids(document_ids)
        elif positions is None:
            positions = (torch.arange(T, device=tokens.device) + cache_len).expand(B, T)
        cos, sin = self.rope_angles(positions)
        if mask is None:
            mask = build_attention_mask(document_ids, T, self.attention_backend, tokens.device, cache_len)
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        for layer in self.layers:
            h = layer(h, cos, sin, mask, cache)
        if cache is not None:
            cache.length += T
        if self.norm is None:
            return h
        h = self.norm(h)
        if return_hidden:
            return h
        return self.output(h).float()

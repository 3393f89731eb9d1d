"""Size arithmetic for a model config: parameters, FLOPs per token, memory.

Computed from shapes alone, so it works for 405B without allocating anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pasture.model.config import ModelConfig
from pasture.model.convert import expected_shapes

GIB = 1024**3


def num_params(config: ModelConfig) -> int:
    """Every stored parameter (a tied output matrix counted once)."""
    return sum(math.prod(shape) for shape in expected_shapes(config).values())


def num_matmul_params(config: ModelConfig) -> int:
    """Parameters that take part in a matmul: all linear layers and the output projection
    (even when tied), but not the embedding lookup or the norm weights."""
    hd, ffn, dim = config.head_dim, config.ffn_hidden_dim, config.dim
    attention = dim * hd * (2 * config.n_heads + 2 * config.n_kv_heads)
    mlp = 3 * dim * ffn
    return config.n_layers * (attention + mlp) + config.vocab_size * dim


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus 12·L·H·Q·T for attention scores
    (the PaLM/torchtitan convention, counting the full T×T score matrix)."""
    attention = 12 * config.n_layers * config.n_heads * config.head_dim * seq_len
    return 6 * num_matmul_params(config) + attention


@dataclass
class MemoryEstimate:
    params: int
    weights_bf16: float
    weights_fp32: float
    grads_fp32: float
    adamw_fp32: float

    @property
    def training_total(self) -> float:
        """fp32 master weights + fp32 gradients + two fp32 AdamW moments (16 bytes/param),
        before activations and before any sharding."""
        return self.weights_fp32 + self.grads_fp32 + self.adamw_fp32


def memory_estimate(config: ModelConfig) -> MemoryEstimate:
    n = num_params(config)
    return MemoryEstimate(params=n, weights_bf16=2 * n, weights_fp32=4 * n, grads_fp32=4 * n, adamw_fp32=8 * n)


def describe(config: ModelConfig, seq_len: int, name: str = "") -> str:
    """A human-readable summary for `pasture model info`."""
    mem = memory_estimate(config)
    rope = "off" if config.rope_scaling is None else (
        f"llama3 factor {config.rope_scaling.factor:g} (low {config.rope_scaling.low_freq_factor:g}, "
        f"high {config.rope_scaling.high_freq_factor:g}, original {config.rope_scaling.original_max_position_embeddings})"
    )
    rows = [
        ("model", name or "custom"),
        ("layers", config.n_layers),
        ("dim", config.dim),
        ("heads / kv heads / head dim", f"{config.n_heads} / {config.n_kv_heads} / {config.head_dim}"),
        ("ffn hidden", config.ffn_hidden_dim),
        ("vocabulary", f"{config.vocab_size:,}"),
        ("rope theta", f"{config.rope_theta:,.0f}"),
        ("rope scaling", rope),
        ("tied embeddings", "yes" if config.tie_embeddings else "no"),
        ("parameters", f"{mem.params:,} ({mem.params / 1e9:.3f} B)"),
        ("matmul parameters", f"{num_matmul_params(config):,}"),
        (f"training FLOPs/token at seq {seq_len}", f"{flops_per_token(config, seq_len):.4g}"),
        ("weights bf16", f"{mem.weights_bf16 / GIB:,.2f} GiB"),
        ("weights fp32", f"{mem.weights_fp32 / GIB:,.2f} GiB"),
        ("gradients fp32", f"{mem.grads_fp32 / GIB:,.2f} GiB"),
        ("AdamW moments fp32", f"{mem.adamw_fp32 / GIB:,.2f} GiB"),
        ("training state total (unsharded)", f"{mem.training_total / GIB:,.2f} GiB"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

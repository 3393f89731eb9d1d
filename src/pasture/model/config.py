"""Model configuration and the named Llama 3 presets.

Dimensions follow Meta's published `params.json` files; the FFN width is derived
with Meta's `ffn_dim_multiplier` / `multiple_of` formula rather than stored, so a
preset can never disagree with the reference.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pasture.errors import PastureError

LLAMA3_VOCAB_SIZE = 128_256


class ConfigError(PastureError, ValueError):
    """A configuration that cannot describe a valid model; the message names the field."""


@dataclass
class RopeScaling:
    """Llama 3.1 frequency scaling of the rotary inverse frequencies."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass
class ModelConfig:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 8
    vocab_size: int = LLAMA3_VOCAB_SIZE
    multiple_of: int = 1024
    ffn_dim_multiplier: float | None = 1.3
    norm_eps: float = 1e-5
    rope_theta: float = 500_000.0
    rope_scaling: RopeScaling | None = field(default_factory=RopeScaling)
    max_seq_len: int = 131_072
    tie_embeddings: bool = False
    # Explicit FFN width for checkpoints whose width no multiplier/multiple_of pair
    # reproduces; None means Meta's formula below.
    ffn_dim: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        self.validate()

    def validate(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "max_seq_len"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ConfigError(f"model.dim={self.dim} is not divisible by model.n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head dimension {self.head_dim} must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """Meta's FeedForward width: 2/3 of 4*dim, times the multiplier, rounded up to `multiple_of`."""
        if self.ffn_dim is not None:
            return self.ffn_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config key(s): {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"format": "pasture", **self.to_dict()}, indent=2) + "\n")

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _llama31(**kw: Any) -> ModelConfig:
    return ModelConfig(rope_scaling=RopeScaling(factor=8.0), **kw)


def _llama32(**kw: Any) -> ModelConfig:
    return ModelConfig(rope_scaling=RopeScaling(factor=32.0), multiple_of=256, tie_embeddings=True, **kw)


PRESETS: dict[str, ModelConfig] = {
    # A few million parameters: trains on a laptop CPU in minutes. Small vocabulary
    # because a tiny model spends most of its parameters on the embedding otherwise;
    # recipes override vocab_size with the trained tokenizer's size.
    # (the `tiny` recipe, which `pasture speedrun` trains, narrows it to the shape its IsoFLOP
    # sweep chose: width 64, 2 layers; benchmarks/RESULTS.md)
    "tiny": ModelConfig(
        dim=128, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=8192, multiple_of=64,
        ffn_dim_multiplier=None, rope_scaling=None, max_seq_len=2048, tie_embeddings=True,
    ),
    "125m": ModelConfig(
        dim=768, n_layers=12, n_heads=12, n_kv_heads=4, vocab_size=LLAMA3_VOCAB_SIZE, multiple_of=256,
        ffn_dim_multiplier=None, rope_scaling=None, max_seq_len=8192, tie_embeddings=True,
    ),
    "llama3.2-1b": _llama32(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim_multiplier=1.5),
    "llama3.2-3b": _llama32(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, ffn_dim_multiplier=1.0),
    "llama3.1-8b": _llama31(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim_multiplier=1.3, multiple_of=1024),
    "llama3.1-70b": _llama31(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim_multiplier=1.3, multiple_of=4096),
    "llama3.1-405b": _llama31(dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, ffn_dim_multiplier=1.2, multiple_of=4096),
}


def preset(name: str) -> ModelConfig:
    """A fresh copy of a named preset; unknown names list the valid ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])

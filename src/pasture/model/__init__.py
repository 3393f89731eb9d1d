"""The Llama 3 model: configs and presets, the transformer, and checkpoint formats.

`load(path_or_preset)` is the one entry point later stages use:

    model, config = pasture.model.load("llama3.2-1b")            # random init
    model, config = pasture.model.load("path/to/hf_or_meta_or_pasture_folder")
    logits = model(tokens)                                       # [batch, seq, vocab]
"""

from __future__ import annotations

from pathlib import Path

import torch

from pasture.model.config import PRESETS, ConfigError, ModelConfig, RopeScaling, preset
from pasture.model.convert import CheckpointError, read_checkpoint, write_checkpoint
from pasture.model.gguf import is_gguf, read_gguf
from pasture.model.llama import KVCache, Transformer

__all__ = [
    "PRESETS", "ConfigError", "CheckpointError", "ModelConfig", "RopeScaling", "KVCache", "Transformer",
    "build", "load", "preset", "save",
]


def build(config: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
          attention_backend: str = "auto", seed: int | None = None) -> Transformer:
    """A freshly initialised model. `device="meta"` allocates nothing (for inspecting 405B)."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        model = Transformer(config, attention_backend=attention_backend)
    return model.to(dtype) if str(device) != "meta" else model


def load(path_or_preset: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         attention_backend: str = "auto", seed: int = 0) -> tuple[Transformer, ModelConfig]:
    """A model and its config from a preset name, a pasture / Hugging Face / Meta checkpoint folder,
    a pre-training run's checkpoint folder, or a llama GGUF file (dequantized)."""
    name = str(path_or_preset)
    if name in PRESETS and not Path(name).exists():
        config = preset(name)
        return build(config, device, dtype, attention_backend, seed), config
    path = Path(name)
    if not path.exists():
        raise CheckpointError(f"{name!r} is neither a preset ({', '.join(PRESETS)}) nor an existing checkpoint folder")
    state, config = _read_any(path)
    with torch.device("meta"):
        model = Transformer(config, attention_backend=attention_backend)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    if config.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.init_rope(device)  # buffers are not in checkpoints
    return model.to(device), config


def _read_any(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    from pasture.train import checkpoint as training_checkpoint

    if path.suffix == ".gguf" or is_gguf(path):
        return read_gguf(path)

    if training_checkpoint.is_run_or_checkpoint(path):
        return training_checkpoint.read_model_state(path)
    state, config, _ = read_checkpoint(path)
    return state, config


def save(model: Transformer, dst: str | Path, fmt: str = "pasture") -> Path:
    """Write a model as a pasture, Hugging Face (`hf`) or Meta (`meta`) checkpoint folder."""
    return write_checkpoint(model.state_dict(), model.config, dst, fmt)

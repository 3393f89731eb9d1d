"""The Llama 3 model: configs and presets, the transformer, and model formats.

`load(path_or_preset)` reads model formats:

    model, config = pasture.model.load("llama3.2-1b")            # random init
    model, config = pasture.model.load("path/to/hf_or_meta_or_pasture_folder")
    logits = model(tokens)                                       # [batch, seq, vocab]

    model, config = pasture.model.load("runs/tiny")              # a finished run's final model

A finished training run (pre- or post-training) holds its final model, the average of
its annealing checkpoints when it kept them, as a pasture model folder in `RUN/model/`;
`load(RUN)` opens that. Checkpoints (and runs still training) are a training format:
`pasture.runs.load` opens them too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pasture.model.config import PRESETS, ConfigError, ModelConfig, RopeScaling, preset
from pasture.model.convert import CheckpointError, read_checkpoint, write_checkpoint
from pasture.model.gguf import is_gguf, read_gguf
from pasture.model.llama import KVCache, Transformer

__all__ = [
    "PRESETS", "ConfigError", "CheckpointError", "ModelConfig", "RopeScaling", "KVCache", "Transformer",
    "build", "from_weights", "load", "preset", "read_weights", "save",
]

# what `pasture.train.checkpoint` writes (docs/formats.md): recognised here only to point to pasture.runs
TRAINING_CHECKPOINTS = "checkpoints"
TRAINING_FORMAT = "pasture-checkpoint"
FINAL_MODEL_DIR = "model"  # a finished run's final model, a pasture model folder


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
    """A model and its config from a preset name, a pasture / Hugging Face / Meta model folder,
    or a llama GGUF file (dequantized).

    Training runs and checkpoints are opened by `pasture.runs.load`, which reads these too.
    """
    name = str(path_or_preset)
    if name in PRESETS and not Path(name).exists():
        config = preset(name)
        return build(config, device, dtype, attention_backend, seed), config
    if not Path(name).exists():
        raise CheckpointError(f"{name!r} does not exist and is not a preset ({', '.join(PRESETS)})")
    state, config = read_weights(name)
    return from_weights(state, config, device, dtype, attention_backend), config


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Weights (pasture names) and config of a pasture / Hugging Face / Meta model folder, of a
    finished run's final model, or of a llama GGUF file."""
    folder = Path(path)
    if is_gguf(folder):
        return read_gguf(folder)
    if not folder.exists():
        raise CheckpointError(f"{str(path)!r} does not exist and is not a preset ({', '.join(PRESETS)})")
    if folder.suffix == ".gguf" or is_gguf(folder):
        return read_gguf(folder)
    if (folder / FINAL_MODEL_DIR / "config.json").is_file():
        folder = folder / FINAL_MODEL_DIR
    elif (folder / TRAINING_CHECKPOINTS).is_dir():
        raise CheckpointError(f"run {folder} has no final model yet ({FINAL_MODEL_DIR}/ is written when training "
                              "finishes); open its newest checkpoint with pasture.runs.load")
    elif _format_of(folder) == TRAINING_FORMAT:
        raise CheckpointError(f"{folder} is a training checkpoint folder: open it with pasture.runs.load")
    state, config, _ = read_checkpoint(folder)
    return state, config


def from_weights(state: dict[str, torch.Tensor], config: ModelConfig, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, attention_backend: str = "auto") -> Transformer:
    """A model holding `state`, built without initialising weights it is about to replace."""
    with torch.device("meta"):
        model = Transformer(config, attention_backend=attention_backend)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    if config.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.init_rope(device)  # buffers are not in checkpoints
    return model.to(device)


def _format_of(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("format")
    except (OSError, json.JSONDecodeError):
        return None


def save(model: Transformer, dst: str | Path, fmt: str = "pasture") -> Path:
    """Write a model as a pasture, Hugging Face (`hf`) or Meta (`meta`) checkpoint folder."""
    return write_checkpoint(model.state_dict(), model.config, dst, fmt)

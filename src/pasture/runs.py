"""Open any model a user can point at: a training run, a checkpoint, or a model format.

`pasture.model.load` reads model formats (presets; pasture, Hugging Face, Meta and GGUF;
a finished run's final model in `RUN/model/`). A checkpoint folder and a weights folder
(`anneal/`, `averaged/`) are training formats, read by `train.checkpoint`; `load` here
reads both kinds, so commands, evaluation and serving take any of them:

    model, config = pasture.runs.load("runs/tiny")          # its final model; while training, its newest checkpoint
    model, config = pasture.runs.load("runs/tiny/checkpoints/step_00000500")   # one checkpoint
    model, config = pasture.runs.load("runs/speedrun")      # a speedrun folder: its chat model (or pre-training run)
    model, config = pasture.runs.load("llama3.2-1b")        # anything pasture.model.load reads
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pasture import model as model_formats
from pasture.model.config import ModelConfig
from pasture.model.llama import Transformer
from pasture.train import checkpoint as ckpt

__all__ = ["describe", "load", "read_weights", "run_folder"]


def run_folder(path: str | Path) -> Path:
    """A speedrun folder (`stages/` and `train/`) means its chat model once post-training is done,
    its pre-training run before; any other path itself."""
    path = Path(path)
    if (path / "stages").is_dir() and (path / "train").is_dir():
        if (path / "stages" / "post.json").is_file():
            return path / "post" / "dpo"
        return path / "train"
    return path


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Weights (CPU, pasture names) and config of everything `load` opens."""
    return ckpt.read_weights(run_folder(path))


def describe(path: str | Path) -> str:
    """Which weights `load(path)` uses, in words (for reports and logs)."""
    path = run_folder(path)
    source = path / model_formats.FINAL_MODEL_DIR / "source.json"
    if source.is_file():
        return f"final model: {json.loads(source.read_text())['description']}"
    if ckpt.is_training_format(path):
        return f"checkpoint {ckpt.resolve(path)}"
    return str(path)


def load(path_or_preset: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         attention_backend: str = "auto", seed: int = 0) -> tuple[Transformer, ModelConfig]:
    """A model and its config from a run, checkpoint or weights folder, or anything
    `pasture.model.load` reads (a preset or a pasture / Hugging Face / Meta model folder)."""
    path_or_preset = run_folder(path_or_preset) if Path(path_or_preset).exists() else path_or_preset
    if ckpt.is_training_format(Path(path_or_preset)):
        state, config = ckpt.read_model_state(Path(path_or_preset))
        return model_formats.from_weights(state, config, device, dtype, attention_backend), config
    return model_formats.load(path_or_preset, device, dtype, attention_backend, seed)

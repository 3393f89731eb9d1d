"""The pre-training recipe: its TOML sections as typed dataclasses, and the checks that
make a bad recipe fail before any work starts (`pasture pretrain`, `pasture plan`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pasture.config import apply_overrides, build_dataclass, load_toml_recipe
from pasture.errors import PastureError
from pasture.model.config import ModelConfig, preset
from pasture.train import float8
from pasture.train.parallel import Layout, ParallelConfig, check_batch
from pasture.train.schedule import OptimConfig, validate_schedule

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"


@dataclass
class ModelSection:
    preset: str = "tiny"
    attention_backend: str = "auto"
    init_from: str = ""  # checkpoint to start from (continued pre-training)
    # any ModelConfig field (dim, n_layers, vocab_size, rope_theta, ...) overrides the preset
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    train: list[str] = field(default_factory=list)  # token dataset folders (`pasture tokenize` output)
    weights: list[float] = field(default_factory=list)  # mixing weights, default equal
    val: str = ""  # dataset whose `val` split is held out; default: the first train dataset
    anneal: list[str] = field(default_factory=list)  # datasets for the annealing phase (default: train)
    anneal_weights: list[float] = field(default_factory=list)
    seed: int = 0
    # rows of a batch are read from this many far-apart regions of the shuffled stream,
    # so long documents do not fill whole batches (see pasture.train.loader)
    lanes: int = 32


@dataclass
class TrainSection:
    steps: int = 100
    seq_len: int = 256
    batch_size: int = 8  # sequences per optimizer step, all ranks together
    micro_batch_size: int = 0  # sequences per forward/backward per rank; 0 = no accumulation
    batch_ramp: list[list[float]] = field(default_factory=list)  # [[tokens_seen, batch_tokens], ...]
    seq_len_schedule: list[list[float]] = field(default_factory=list)  # [[tokens_seen, seq_len], ...]
    anneal_steps: int = 0  # final steps: learning rate linearly to 0 on the anneal data
    time_budget_s: float = 0.0  # fit the run into this many seconds; `steps` becomes a ceiling (0: off)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | float32 | bfloat16
    compile: bool = False  # torch.compile each transformer block and the loss's elementwise work
    float8: str = "none"  # none | tensorwise | rowwise: torchao float8 matmuls in the blocks (H100+; pasture[float8])
    document_mask: bool = True
    loss_chunk_tokens: int = 8192  # the loss projects this many tokens to the vocabulary at a time
    seed: int = 0
    max_bad_steps: int = 5  # consecutive skipped steps before the run stops
    max_grad_norm: float = 0.0  # skip a step whose gradient norm exceeds this (0: no ceiling)
    grad_spike_factor: float = 10.0  # skip a step whose gradient norm exceeds this x the recent median (0: off)
    threads: int = 0  # CPU threads (0: torch's default)


@dataclass
class CheckpointSection:
    every: int = 100
    keep_last: int = 3
    anneal_every: int = 0  # during annealing: keep weights every N steps for averaging (0: off)
    final: bool = True  # checkpoint the last step (false for throwaway benchmark runs: 1B + AdamW is 15 GB)


@dataclass
class EvalSection:
    every: int = 50
    batches: int = 8
    batch_size: int = 8
    tasks: list[str] = field(default_factory=list)  # benchmark tasks run in the loop (`pasture eval` names)
    tasks_every: int = 0  # steps between them (0: at `every`), and at the end
    tasks_limit: int = 100  # first N items of each task
    prompts: list[str] = field(default_factory=list)  # sampled at the end of the run
    sample_tokens: int = 48
    temperature: float = 0.8
    top_p: float = 0.9


@dataclass
class LogSection:
    dir: str = "runs/default"
    every: int = 1
    tensorboard: bool = True
    progress: bool = True


@dataclass
class PretrainRecipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log: LogSection = field(default_factory=LogSection)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    resume: str = "never"  # never | auto | path to a checkpoint folder
    name: str = ""


MODEL_KEYS = {"preset", "attention_backend", "init_from"}


def parse_recipe(raw: dict[str, Any]) -> PretrainRecipe:
    """A typed recipe from TOML data; unknown keys and wrong types raise naming the key."""
    raw = dict(raw)
    model = dict(raw.get("model", {}))
    raw["model"] = {k: v for k, v in model.items() if k in MODEL_KEYS}
    raw["model"]["overrides"] = {k: v for k, v in model.items() if k not in MODEL_KEYS}
    recipe = build_dataclass(PretrainRecipe, raw, "")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    for key in recipe.model.overrides:
        if key not in known:
            raise PastureError(f"unknown key model.{key} (model keys: {', '.join(sorted(MODEL_KEYS | known))})")
    t = recipe.train
    for name in ("steps", "seq_len", "batch_size"):
        if getattr(t, name) <= 0:
            raise PastureError(f"train.{name} must be positive, got {getattr(t, name)}")
    if t.time_budget_s < 0:
        raise PastureError(f"train.time_budget_s must be 0 (off) or a number of seconds, got {t.time_budget_s}")
    if t.anneal_steps >= t.steps:
        raise PastureError(f"train.anneal_steps={t.anneal_steps} must be below train.steps={t.steps}")
    if t.batch_ramp:
        validate_schedule(t.batch_ramp, "train.batch_ramp")
    if t.seq_len_schedule:
        validate_schedule(t.seq_len_schedule, "train.seq_len_schedule")
    float8.check_recipe_name(t.float8)
    if t.float8 != "none" and recipe.parallel.tp > 1:
        raise PastureError("train.float8 does not support parallel.tp > 1 yet (torchao's float8 tensor-parallel "
                           "styles are untested here); use it with FSDP/HSDP or pipeline parallelism, or set "
                           "train.float8=none")
    recipe.optim.validate(t.steps)
    if not recipe.data.train:
        raise PastureError("data.train is empty: give token dataset folders made by `pasture tokenize`")
    if recipe.data.weights and len(recipe.data.weights) != len(recipe.data.train):
        raise PastureError("data.weights must have one weight per data.train folder")
    return recipe


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> dict[str, Any]:
    """A recipe file or shipped name (`tiny` -> recipes/tiny.toml) with `section.key=value`
    overrides applied, as raw TOML data; `parse_recipe` types and checks it (the same pair
    as `pasture.data.recipe`)."""
    return apply_overrides(load_toml_recipe(name_or_path, RECIPE_DIR), list(overrides))


def autocast_dtype(recipe: PretrainRecipe, device: torch.device) -> torch.dtype | None:
    """bf16 autocast over fp32 master weights on GPU; plain fp32 on CPU unless asked."""
    choice = recipe.train.dtype
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if choice == "bfloat16":
        return torch.bfloat16
    if choice == "float32":
        return None
    raise PastureError(f"train.dtype must be auto, float32 or bfloat16, got {choice!r}")


def build_model_config(recipe: PretrainRecipe, dataset_vocab: int) -> ModelConfig:
    """The preset with recipe overrides; the vocabulary follows the data unless set explicitly."""
    config = preset(recipe.model.preset)
    values = config.to_dict()
    values.update(recipe.model.overrides)
    if "vocab_size" not in recipe.model.overrides:
        values["vocab_size"] = dataset_vocab
    config = build_dataclass(ModelConfig, values, "model")
    if config.vocab_size < dataset_vocab:
        raise PastureError(f"model.vocab_size={config.vocab_size} is smaller than the data's vocabulary {dataset_vocab}")
    return config


def check_batch_shapes(recipe: PretrainRecipe, layout: Layout) -> list[int]:
    """Check every (batch size, sequence length) the two token schedules can combine; the sequence lengths."""
    t = recipe.train
    seq_schedule = t.seq_len_schedule or [[0, t.seq_len]]
    ramp = t.batch_ramp or [[0, None]]
    ends = lambda schedule, i: schedule[i + 1][0] if i + 1 < len(schedule) else math.inf  # noqa: E731
    for i, (seq_from, seq_len) in enumerate(seq_schedule):
        for j, (batch_from, batch_tokens) in enumerate(ramp):
            if batch_from < ends(seq_schedule, i) and seq_from < ends(ramp, j):
                batch_size = int(batch_tokens) // int(seq_len) if batch_tokens else t.batch_size
                check_batch(batch_size, t.micro_batch_size or max(1, batch_size // layout.dp), recipe.parallel, layout)
    return [int(s) for _, s in seq_schedule]

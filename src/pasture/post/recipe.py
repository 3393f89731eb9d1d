"""Post-training recipes: `recipes/post/*.toml`, typed, with `section.key=value` overrides.

One recipe type serves SFT, the reward model and DPO; each reads the sections it needs
(`[sft]`, `[reward]`, `[dpo]`) besides the shared ones. Defaults follow Llama 3 §4.1:
DPO at lr 1e-5 with β = 0.1 and an NLL term of 0.2, formatting tokens masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pasture.config import apply_overrides, build_dataclass, load_toml_recipe
from pasture.errors import PastureError
from pasture.train.parallel import ParallelConfig
from pasture.train.schedule import OptimConfig

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes" / "post"
REFERENCES = ("precomputed", "frozen")
# fine-tuning, not pre-training: Llama 3's lr 1e-5, constant, no weight decay; a recipe's [optim] changes single keys
OPTIM_DEFAULTS = {"lr": 1e-5, "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.0,
                  "betas": [0.9, 0.999], "eps": 1e-8}


@dataclass
class ModelSection:
    tokenizer: str = ""  # override the model's own tokenizer / chat template (a folder or `llama3`)
    attention_backend: str = "auto"


@dataclass
class DataSection:
    max_len: int = 2048  # context: longer conversations are skipped and counted (`too_long`)
    heldout_fraction: float = 0.05  # reward / DPO: pairs held out for accuracy, the same on every run
    seed: int = 0


@dataclass
class TrainSection:
    steps: int = 100
    batch_size: int = 8  # per optimizer step: packed rows (SFT) or preference pairs (reward, DPO)
    micro_batch_size: int = 0  # per forward/backward per rank; 0: no accumulation
    seq_len: int = 2048  # SFT: packed row length
    device: str = "auto"
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | float32 | bfloat16
    compile: bool = False
    loss_chunk_tokens: int = 8192
    seed: int = 0
    threads: int = 0  # CPU threads (0: torch's default)
    max_bad_steps: int = 5
    max_grad_norm: float = 0.0
    grad_spike_factor: float = 10.0


@dataclass
class CheckpointSection:
    every: int = 100
    keep_last: int = 2
    final: bool = True


@dataclass
class LogSection:
    every: int = 1
    eval_every: int = 0  # reward / DPO: held-out accuracy every N steps (always at the end)
    tensorboard: bool = False
    progress: bool = True


@dataclass
class DPOSection:
    beta: float = 0.1
    nll_weight: float = 0.2  # NLL on the chosen response, per token (Llama 3)
    mask_format_tokens: bool = True  # drop header / end-of-turn tokens from the log-prob sums (off: TRL parity)
    reference: str = "precomputed"  # precomputed (one pass before training) | frozen (a copy in memory)


@dataclass
class PostRecipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(**OPTIM_DEFAULTS))
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    dpo: DPOSection = field(default_factory=DPOSection)
    resume: str = "never"  # never | auto | a checkpoint folder
    name: str = ""


def parse_recipe(raw: dict[str, Any]) -> PostRecipe:
    """A typed recipe; unknown keys and wrong types raise naming the key."""
    raw = {**raw, "optim": {**OPTIM_DEFAULTS, **raw.get("optim", {})}}
    recipe = build_dataclass(PostRecipe, raw, "")
    for name in ("steps", "batch_size", "seq_len"):
        if getattr(recipe.train, name) <= 0:
            raise PastureError(f"train.{name} must be positive, got {getattr(recipe.train, name)}")
    if recipe.dpo.reference not in REFERENCES:
        raise PastureError(f"dpo.reference must be one of {', '.join(REFERENCES)}, got {recipe.dpo.reference!r}")
    if not 0 <= recipe.data.heldout_fraction < 1:
        raise PastureError(f"data.heldout_fraction must be in [0, 1), got {recipe.data.heldout_fraction}")
    recipe.optim.validate(recipe.train.steps)
    return recipe


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> tuple[PostRecipe, dict[str, Any]]:
    """A shipped recipe name (`dpo` → recipes/post/dpo.toml) or a file, with overrides."""
    raw = apply_overrides(load_toml_recipe(name_or_path, RECIPE_DIR), list(overrides))
    return parse_recipe(raw), raw

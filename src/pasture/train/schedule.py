"""Optimizer, learning-rate schedules, batch-size ramp and sequence-length stages.

Llama recipe defaults: AdamW (0.9, 0.95), eps 1e-5, weight decay 0.1 on matrices only,
linear warmup then cosine decay to 10% of peak; warmup-stable-decay as an option; an
annealing phase takes the learning rate linearly to 0 over the final steps.
Schedules are pure functions of the step (and tokens seen), so resuming needs only
the step counter to land on exactly the same values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pasture.errors import PastureError


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of the peak
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine" | "wsd" | "constant"
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-5
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    fused: bool = True  # fused AdamW kernel on CUDA

    def validate(self, steps: int) -> None:
        if self.schedule not in ("cosine", "wsd", "constant"):
            raise PastureError(f"optim.schedule must be cosine, wsd or constant, got {self.schedule!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise PastureError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2:
            raise PastureError(f"optim.betas must have two values, got {self.betas}")
        if self.warmup_steps > steps:
            raise PastureError(f"optim.warmup_steps={self.warmup_steps} exceeds train.steps={steps}")


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D weights (matmuls, embeddings) and none on norm gains."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    on_cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             fused=bool(cfg.fused and on_cuda))


def learning_rate(step: int, steps: int, cfg: OptimConfig, anneal_steps: int = 0) -> float:
    """Learning rate for optimizer step `step` (0-based) of `steps`.

    The last `anneal_steps` steps take the rate linearly from where the main schedule
    ended to 0 (Llama 3's annealing phase).
    """
    main_steps = steps - anneal_steps
    if step < main_steps or step < cfg.warmup_steps:
        return _main_schedule(step, main_steps, cfg)
    start = _main_schedule(main_steps - 1, main_steps, cfg)
    return start * (steps - step) / (anneal_steps + 1)


def _main_schedule(step: int, steps: int, cfg: OptimConfig) -> float:
    """Warmup, then cosine / warmup-stable-decay / constant over `steps` steps."""
    peak = cfg.lr
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    floor = peak * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps))
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_steps = max(1, int(steps * cfg.decay_fraction))
    decay_start = steps - decay_steps
    if step < decay_start:
        return peak
    return peak - (peak - floor) * (step - decay_start + 1) / decay_steps


def schedule_value(schedule: list[list[float]], tokens_seen: int, what: str) -> int:
    """The value of a token-scheduled setting (batch ramp, sequence length) once `tokens_seen`
    tokens are trained.

    `schedule` is a list of [tokens_threshold, value] pairs with increasing thresholds,
    the first at 0; e.g. Llama 3 405B's batch ramp [[0, 4M], [252M, 8M], [2.87T, 16M]].
    """
    validate_schedule(schedule, what)
    value = schedule[0][1]
    for threshold, v in schedule:
        if tokens_seen >= threshold:
            value = v
    return int(value)


def validate_schedule(schedule: list[list[float]], what: str) -> None:
    if not schedule or schedule[0][0] != 0:
        raise PastureError(f"{what} must start with a [0, value] entry, got {schedule}")
    thresholds = [s[0] for s in schedule]
    if any(len(s) != 2 for s in schedule) or thresholds != sorted(thresholds):
        raise PastureError(f"{what} must be [tokens, value] pairs with increasing tokens, got {schedule}")

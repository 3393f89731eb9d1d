"""Which optimizer steps are applied: the guard against bad batches and loss spikes.

A step is skipped (its gradients dropped, the data consumed) when its loss or gradient
norm is not finite, when the gradient norm exceeds an absolute ceiling, or when it
spikes far above the median of recent good steps: one pathological batch then costs a
step instead of the run. The recent norms are part of the checkpoint, so a resumed run
makes the same decisions as one that never stopped.
"""

from __future__ import annotations

import math
import statistics
from typing import Any


class StepGuard:
    def __init__(self, max_grad_norm: float = 0.0, spike_factor: float = 0.0, window: int = 50,
                 min_history: int = 20) -> None:
        self.max_grad_norm = max_grad_norm
        self.spike_factor = spike_factor
        self.window = window
        self.min_history = min_history
        self.history: list[float] = []

    def reason_to_skip(self, loss: float, grad_norm: float) -> str | None:
        """Why this step must not be applied, or None to apply it."""
        if not math.isfinite(loss):
            return "non_finite_loss"
        if not math.isfinite(grad_norm):
            return "non_finite_grad_norm"
        if self.max_grad_norm > 0 and grad_norm > self.max_grad_norm:
            return "grad_norm_above_max"
        if self.spike_factor > 0 and len(self.history) >= self.min_history:
            if grad_norm > self.spike_factor * statistics.median(self.history):
                return "grad_norm_spike"
        return None

    def applied(self, grad_norm: float) -> None:
        """Record the norm of a step that was applied."""
        self.history = (self.history + [grad_norm])[-self.window:]

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [float(x) for x in state.get("history", [])]

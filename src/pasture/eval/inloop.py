"""In-loop evaluation: a few tasks on the first items of their splits, every N training steps.

The training loop knows nothing of evaluation; it calls a hook `(model, step) -> metrics` and
writes what comes back into metrics.jsonl as a `{"kind": "eval", "step": ...}` record. The
model is evaluated as it is (eval mode for the pass, then put back), with the same scorer and
prompts as `pasture eval`, so in-loop numbers match a later `pasture eval --limit N`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pasture.eval.evaluator import EvalSettings, evaluate
from pasture.eval.lm import EvalModel
from pasture.model import Transformer
from pasture.tokenizer import Tokenizer

HEADLINE = ("acc", "acc_norm", "acc_per_token", "bits_per_byte", "exact_match", "pass@1")


@dataclass
class InLoopEval:
    """Runs `tasks` (log-likelihood tasks: multiple choice or documents) every `every` steps."""

    tokenizer: Tokenizer
    tasks: list[str] = field(default_factory=lambda: ["arc_easy", "hellaswag", "piqa"])
    every: int = 500
    limit: int = 100
    shots: int = 0
    batch_size: int = 16

    def due(self, step: int) -> bool:
        return self.every > 0 and step > 0 and step % self.every == 0

    def __call__(self, model: Transformer, step: int) -> dict[str, float]:
        """`{"<task>/<metric>": value}` for this step's model."""
        was_training = model.training
        lm = EvalModel(model, self.tokenizer, batch_size=self.batch_size, progress=False, name=f"step {step}")
        try:
            with torch.autocast(model.tok_embeddings.weight.device.type, enabled=False):
                results = evaluate(lm, self.tasks, EvalSettings(shots=self.shots, limit=self.limit))["results"]
        finally:
            model.train(was_training)
        return {f"{task}/{metric}": float(value) for task, metrics in results.items()
                for metric, value in metrics.items() if metric in HEADLINE}

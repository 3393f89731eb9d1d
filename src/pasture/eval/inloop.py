"""In-loop evaluation: a few tasks on the first items of their splits, every N training steps.

The training loop knows nothing of evaluation; it calls a hook `(model, step) -> metrics` and
writes what comes back into metrics.jsonl as a `{"kind": "eval", "step": ...}` record. The
model is evaluated as it is (eval mode for the pass, then put back), with the same scorer and
prompts as `pasture eval`, so in-loop numbers match a later `pasture eval --limit N`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from pasture.eval.evaluator import EvalSettings, evaluate
from pasture.eval.lm import EvalModel
from pasture.model import Transformer
from pasture.tokenizer import Tokenizer

HEADLINE = ("acc", "acc_norm", "acc_per_token", "bits_per_byte", "exact_match", "pass@1")


@dataclass
class InLoopEval:
    """Runs `tasks` (log-likelihood tasks: multiple choice or documents) on the first `limit`
    items. `tokenizer` may be a path, read at the first call (a run folder's tokenizer.model is
    copied there when training starts). Runs in one process (no FSDP/TP sharding of the model)."""

    tokenizer: Tokenizer | str | Path
    tasks: list[str] = field(default_factory=lambda: ["arc_easy", "hellaswag", "piqa"])
    limit: int = 100
    shots: int = 0
    batch_size: int = 16

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """`{"<task>/<metric>": value}` for this step's model (a Transformer, or a module wrapping one)."""
        if not isinstance(self.tokenizer, Tokenizer):
            self.tokenizer = Tokenizer.load(self.tokenizer)
        transformer = next(m for m in model.modules() if isinstance(m, Transformer))
        was_training = model.training
        lm = EvalModel(transformer, self.tokenizer, batch_size=self.batch_size, progress=False, name=f"step {step}")
        try:
            with torch.autocast(transformer.tok_embeddings.weight.device.type, enabled=False):
                results = evaluate(lm, self.tasks, EvalSettings(shots=self.shots, limit=self.limit))["results"]
        finally:
            model.train(was_training)
        return {f"{task}/{metric}": float(value) for task, metrics in results.items()
                for metric, value in metrics.items() if metric in HEADLINE}


def from_recipe(recipe) -> InLoopEval | None:
    """The in-loop evaluation a pre-training recipe asks for (`eval.tasks`), or None."""
    if not recipe.eval.tasks:
        return None
    return InLoopEval(Path(recipe.log.dir) / "tokenizer.model", list(recipe.eval.tasks), limit=recipe.eval.tasks_limit,
                      batch_size=recipe.eval.batch_size)

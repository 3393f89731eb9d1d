"""`pasture sft MODEL --data FILE... --out RUN`: supervised fine-tuning on conversations.

Conversations are encoded with the model's chat format (loss on the assistant's tokens,
end-of-turn included, headers and tool outputs masked), packed into rows with document
ids (attention and positions stay inside a conversation), and trained with the core's
next-token objective: the loss is the mean over the step's target tokens, however the
step is split into micro-batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pasture.post.data import read_conversations
from pasture.post.encode import ChatEncoder, encode_conversations, pack
from pasture.post.models import load_encoder
from pasture.post.recipe import PostRecipe
from pasture.post.trainer import log_main, PostTask, run_task, starting_point, write_summary
from pasture.train.loss import IGNORE_INDEX
from pasture.train.task import Batch, NextTokenObjective


class SFTTask(PostTask):
    """Items are packed rows of `seq_len` tokens."""

    def __init__(self, rows: dict[str, torch.Tensor], encoder: ChatEncoder, batch_size: int, seed: int,
                 data_report: dict[str, Any]) -> None:
        super().__init__(NextTokenObjective(document_mask=True), encoder, len(rows["inputs"]), batch_size, seed,
                         data_report)
        self.rows = rows

    def make_batch(self, items: list[int], step_items: list[int]) -> tuple[Batch, int]:
        index = torch.tensor(items)
        batch = {k: v[index] for k, v in self.rows.items()}
        return batch, int(batch["inputs"].numel())


def prepare(encoder: ChatEncoder, data: list[str], recipe: PostRecipe) -> tuple[dict[str, torch.Tensor], dict]:
    """Read, validate, encode and pack; the packed rows and the data report."""
    conversations, skipped = read_conversations(data)
    max_len = min(recipe.data.max_len, recipe.train.seq_len + 1)
    examples = encode_conversations(encoder, conversations, max_len, skipped)
    rows = pack(examples, recipe.train.seq_len, encoder.pad_id, seed=recipe.data.seed)
    report = {**skipped.as_dict(), "rows": len(rows["inputs"]), "input_tokens": sum(len(e.tokens) - 1 for e in examples),
              "target_tokens": int((rows["targets"] != IGNORE_INDEX).sum()),
              "fill": float((rows["targets"] != IGNORE_INDEX).float().mean())}
    return rows, report


def sft(model_spec: str, data: list[str], out: str | Path, recipe: PostRecipe, raw_recipe: dict[str, Any],
        log=log_main) -> dict[str, Any]:
    """Fine-tune `model_spec` on the conversations in `data`; the run's summary."""
    run_dir = Path(out)
    encoder = load_encoder(model_spec, recipe.model.tokenizer or None)
    rows, report = prepare(encoder, data, recipe)
    log(f"sft data: {report['kept']} conversations in {report['rows']} rows "
        f"({report['target_tokens']:,} target tokens); skipped {report['skipped'] or 'none'}")
    _, config, init_from = starting_point(model_spec, run_dir)
    task = SFTTask(rows, encoder, recipe.train.batch_size, recipe.data.seed, report)
    summary, _ = run_task(task, recipe, raw_recipe, config, init_from, run_dir, name="sft", log=log)
    summary["data"] = report
    write_summary(run_dir, summary)
    return summary

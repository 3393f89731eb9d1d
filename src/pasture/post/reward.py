"""`pasture reward MODEL --data PREFS... --out RUN`: a Bradley–Terry reward model.

The Transformer gets a scalar head (`RewardModel`), read at each response's end-of-turn
token. Every ranked pair of a record is a training pair (edited > chosen > rejected gives
three). A held-out share of the records (`data.heldout_fraction`) measures pairwise
accuracy, before training and after (`summary.json`, and `val` rows of metrics.jsonl).
The head is in the checkpoints with the Transformer (`reward_model.load_reward_model`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pasture.post.data import Preference, Skipped, read_preferences
from pasture.post.encode import ChatEncoder, EncodedPair, encode_pairs, pad_pairs
from pasture.post.losses import bradley_terry_loss
from pasture.post.models import load_encoder
from pasture.post.recipe import PostRecipe
from pasture.post.reward_model import RewardModel
from pasture.post.trainer import log_main, PostTask, heldout_split, run_task, starting_point, write_summary
from pasture.train.task import Batch, LossOutput, ModelView


class BradleyTerryObjective:
    """−log σ(r_chosen − r_rejected) summed over the micro-batch's pairs; one target per pair."""

    def count_targets(self, batch: Batch) -> int:
        return int(batch["tokens"].shape[0] // 2)

    def loss(self, model: ModelView, batch: Batch) -> LossOutput:
        scores = model.module(batch["tokens"], batch["score_index"])
        chosen, rejected = scores.chunk(2)
        margin = chosen - rejected
        return LossOutput(bradley_terry_loss(chosen, rejected, n_pairs=1),  # summed: the core divides by the step's pairs
                          {"accuracy": (margin > 0).sum(), "margin": margin.sum()})


class RewardTask(PostTask):
    """Items are preference pairs, batched chosen rows first, right-padded."""

    def __init__(self, pairs: list[EncodedPair], encoder: ChatEncoder, batch_size: int, seed: int,
                 data_report: dict[str, Any]) -> None:
        super().__init__(BradleyTerryObjective(), encoder, len(pairs), batch_size, seed, data_report)
        self.pairs = pairs

    def wrap_model(self, transformer: nn.Module) -> nn.Module:
        return RewardModel(transformer)

    def make_batch(self, items: list[int], step_items: list[int]) -> tuple[Batch, int]:
        batch = pad_pairs([self.pairs[i] for i in items], self.encoder.pad_id)
        return batch, int(batch["tokens"].numel())

    def seq_len(self, batch: Batch) -> int:
        return int(batch["tokens"].shape[1])


@torch.no_grad()
def pairwise_accuracy(score: Callable[[Batch], torch.Tensor], pairs: Sequence[EncodedPair], pad_id: int,
                      batch_size: int = 16) -> dict[str, float]:
    """Share of pairs whose better response scores higher (ties count as wrong), and the mean loss."""
    right, loss = 0.0, 0.0
    for start in range(0, len(pairs), batch_size):
        chosen, rejected = score(pad_pairs(pairs[start:start + batch_size], pad_id)).float().chunk(2)
        right += float((chosen > rejected).sum())
        loss += float(bradley_terry_loss(chosen, rejected, n_pairs=1))
    return {"accuracy": right / len(pairs), "loss": loss / len(pairs), "pairs": len(pairs)}


def model_scorer(model: RewardModel) -> Callable[[Batch], torch.Tensor]:
    device = next(model.parameters()).device
    return lambda batch: model(batch["tokens"].to(device), batch["score_index"].to(device))


def split_pairs(encoder: ChatEncoder, records: list[Preference], recipe: PostRecipe, skipped: Skipped,
                mask_format_tokens: bool = True) -> tuple[list[EncodedPair], list[EncodedPair]]:
    """Training and held-out pairs; a record's pairs stay on one side."""
    train_ids, held_ids = heldout_split(len(records), recipe.data.heldout_fraction, recipe.data.seed)
    train = encode_pairs(encoder, [records[i] for i in train_ids], recipe.data.max_len, skipped, mask_format_tokens)
    held = encode_pairs(encoder, [records[i] for i in held_ids], recipe.data.max_len, Skipped(),
                        mask_format_tokens) if held_ids else []
    skipped.kept = len(train)
    return train, held


def reward(model_spec: str, data: list[str], out: str | Path, recipe: PostRecipe, raw_recipe: dict[str, Any],
           log=log_main) -> dict[str, Any]:
    """Train a reward model from `model_spec` on preference data; the run's summary."""
    run_dir = Path(out)
    encoder = load_encoder(model_spec, recipe.model.tokenizer or None)
    records, skipped = read_preferences(data)
    train_pairs, held = split_pairs(encoder, records, recipe, skipped)
    report = {**skipped.as_dict(), "train_pairs": len(train_pairs), "heldout_pairs": len(held)}
    log(f"reward data: {len(train_pairs)} training pairs, {len(held)} held out; skipped {report['skipped'] or 'none'}")
    start, config, init_from = starting_point(model_spec, run_dir)
    summary: dict[str, Any] = {}
    if held:
        summary["heldout_before"] = pairwise_accuracy(model_scorer(RewardModel(start)), held, encoder.pad_id)
    del start
    task = RewardTask(train_pairs, encoder, recipe.train.batch_size, recipe.data.seed, report)

    def validate(runner) -> Callable[[], dict[str, float]] | None:
        if not held:
            return None
        return lambda: pairwise_accuracy(lambda b: runner.module(b["tokens"].to(runner.device),
                                                                 b["score_index"].to(runner.device)),
                                         held, encoder.pad_id)

    loop_summary, runner = run_task(task, recipe, raw_recipe, config, init_from, run_dir, validate=validate,
                                    name="reward", log=log)
    summary.update(loop_summary)
    summary["data"] = report
    if held:
        summary["heldout_accuracy"] = loop_summary.get("accuracy")
        log(f"held-out pairwise accuracy: {summary['heldout_before']['accuracy']:.3f} before, "
            f"{summary['heldout_accuracy']:.3f} after ({len(held)} pairs)")
    write_summary(run_dir, summary)
    return summary

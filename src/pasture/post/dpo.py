"""`pasture dpo MODEL --data PREFS... --out RUN`: Direct Preference Optimization as Llama 3 ran it.

- β = 0.1, learning rate 1e-5 (the recipe's defaults);
- the reference log-probs are computed once, in a pass over the data before training,
  with the starting model (then freed: no second model in memory while training), and
  kept in `RUN/reference_logprobs.pt` for resumes; `dpo.reference=frozen` keeps a frozen
  copy instead and scores each batch with it;
- header and end-of-turn tokens are left out of both the chosen and the rejected
  log-prob sums (`dpo.mask_format_tokens=false` keeps them, as TRL does);
- plus `dpo.nll_weight` (0.2) × the chosen responses' NLL per token.

Each pair runs as one tree row (`encode.tree_pairs`): the prompt once, the two responses as
branches. A pair's log-probs are computed alone, cut to its own length, so they are the same
in the reference pass and in any training batch.

One step's target count is its number of pairs; the NLL term is scaled by pairs / chosen
tokens of the whole step, so after the core divides by the pair count it is the NLL per
chosen token of the step, with or without gradient accumulation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pasture.post.data import read_preferences
from pasture.model.llama import AttentionMask
from pasture.model.tree import tree_attention_mask
from pasture.post.encode import ChatEncoder, EncodedPair, tree_pairs
from pasture.post.losses import dpo_loss
from pasture.post.models import load_encoder
from pasture.post.recipe import PostRecipe
from pasture.post.reward import split_pairs
from pasture.post.trainer import log_main, PlainModelView, PostTask, run_task, starting_point, write_summary
from pasture.runtime import autocast, rank_and_world, resolve_device
from pasture.train.recipe import autocast_dtype
from pasture.train.task import Batch, LossOutput, ModelView

REFERENCE_FILE = "reference_logprobs.pt"


def row_logprobs(model: ModelView, batch: Batch) -> torch.Tensor:
    """Summed log-probs of the scored tokens [2 x pairs]: every chosen response, then every
    rejected one. One pair's tree row per forward, cut to its own length, never a pad; the
    core's chunked (and under TP vocabulary-parallel) loss on the scored positions only."""
    chosen, rejected = [], []
    for r, n in enumerate(batch["lengths"].tolist()):
        positions = batch["positions"][r:r + 1, :n]
        mask = AttentionMask("dense", dense=tree_attention_mask(positions, batch["branch"][r:r + 1, :n]))
        hidden = model.hidden_states(batch["inputs"][r:r + 1, :n], positions, mask)
        chosen.append(-model.hidden_loss_sum(hidden, batch["chosen_targets"][r:r + 1, :n]))
        rejected.append(-model.hidden_loss_sum(hidden, batch["rejected_targets"][r:r + 1, :n]))
    return torch.stack(chosen + rejected).float()


class DPOObjective:
    """The DPO sigmoid loss plus the NLL term, one target per pair (see the module docstring).
    `reference`: a frozen model scoring each batch, instead of the batch's precomputed values."""

    def __init__(self, beta: float, nll_weight: float, reference: nn.Module | None = None) -> None:
        self.beta, self.nll_weight = beta, nll_weight
        self.reference = PlainModelView(reference) if reference is not None else None

    def count_targets(self, batch: Batch) -> int:
        return int(batch["inputs"].shape[0])

    def loss(self, model: ModelView, batch: Batch) -> LossOutput:
        policy = row_logprobs(model, batch)
        if self.reference is not None:
            with torch.no_grad():
                self.reference.module.to(batch["inputs"].device)
                reference = row_logprobs(self.reference, batch)
        else:
            reference = batch["reference"].float()
        chosen, rejected = policy.chunk(2)
        ref_chosen, ref_rejected = reference.chunk(2)
        scale = batch["nll_scale"]  # pairs / chosen tokens of the whole step
        terms = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, -chosen.sum() * scale, beta=self.beta,
                         nll_weight=self.nll_weight, n_pairs=1, n_chosen_tokens=1)
        margin = terms.chosen_rewards - terms.rejected_rewards
        return LossOutput(terms.loss, {
            "dpo_loss": terms.dpo_loss_sum, "nll_loss": terms.nll_sum,
            "chosen_reward": terms.chosen_rewards.sum(), "rejected_reward": terms.rejected_rewards.sum(),
            "reward_accuracy": (margin > 0).sum(), "reward_margin": margin.sum(),
        })


@torch.no_grad()
def pair_logprobs(model: ModelView, pairs: Sequence[EncodedPair], device: torch.device,
                  autocast_dtype: torch.dtype | None = None, batch_size: int = 8, desc: str = "") -> torch.Tensor:
    """[pairs, 2] summed response log-probs (chosen, rejected) of every pair, computed as the
    training step computes them (so policy = reference gives exactly ln 2 at step 1)."""
    from tqdm import tqdm

    out = []
    for start in tqdm(range(0, len(pairs), batch_size), desc=desc or "log-probs", unit="batch",
                      disable=not desc or len(pairs) <= batch_size * 4):
        batch = {k: v.to(device) for k, v in tree_pairs(pairs[start:start + batch_size]).items()}
        with autocast(device, autocast_dtype):
            out.append(torch.stack(row_logprobs(model, batch).chunk(2), dim=1).cpu())
    return torch.cat(out)


def _pairs_digest(pairs: Sequence[EncodedPair]) -> str:
    h = hashlib.sha256(b"tree rows")  # how the log-probs were computed, then the data
    for p in pairs:
        for side in (p.chosen, p.rejected):
            h.update(repr((side.tokens, side.loss_mask)).encode())
    return h.hexdigest()


class DPOTask(PostTask):
    """Items are preference pairs; each batch carries its reference log-probs and the step's NLL scale."""

    def __init__(self, pairs: list[EncodedPair], reference: torch.Tensor | None, encoder: ChatEncoder,
                 objective: DPOObjective, batch_size: int, seed: int, data_report: dict[str, Any]) -> None:
        super().__init__(objective, encoder, len(pairs), batch_size, seed, data_report)
        self.pairs, self.reference = pairs, reference
        self.chosen_tokens = [sum(p.chosen.loss_mask) for p in pairs]

    def make_batch(self, items: list[int], step_items: list[int]) -> tuple[Batch, int]:
        batch = tree_pairs([self.pairs[i] for i in items])
        batch["nll_scale"] = torch.tensor(len(step_items) / sum(self.chosen_tokens[i] for i in step_items))
        if self.reference is not None:
            batch["reference"] = torch.cat([self.reference[items, 0], self.reference[items, 1]])
        return batch, int(batch["lengths"].sum())


def preference_accuracy(logprobs: torch.Tensor, reference: torch.Tensor | None = None) -> dict[str, float]:
    """From [pairs, 2] log-probs: the share of pairs the model prefers rightly, log π(chosen) >
    log π(rejected); with `reference` log-probs, DPO's implicit reward accuracy too."""
    result = {"preference_accuracy": float((logprobs[:, 0] > logprobs[:, 1]).float().mean()), "pairs": len(logprobs)}
    if reference is not None:
        ratios = logprobs - reference
        result["reward_accuracy"] = float((ratios[:, 0] > ratios[:, 1]).float().mean())
    return result


def dpo(model_spec: str, data: list[str], out: str | Path, recipe: PostRecipe, raw_recipe: dict[str, Any],
        log=log_main) -> dict[str, Any]:
    """DPO from `model_spec` on preference data; the run's summary."""
    run_dir = Path(out)
    d = recipe.dpo
    device = resolve_device(recipe.train.device)
    dtype = autocast_dtype(recipe, device)
    encoder = load_encoder(model_spec, recipe.model.tokenizer or None)
    records, skipped = read_preferences(data)
    train_pairs, held = split_pairs(encoder, records, recipe, skipped, d.mask_format_tokens)
    report = {**skipped.as_dict(), "train_pairs": len(train_pairs), "heldout_pairs": len(held)}
    log(f"dpo data: {len(train_pairs)} training pairs, {len(held)} held out; skipped {report['skipped'] or 'none'}")
    start, config, init_from = starting_point(model_spec, run_dir)
    start = start.to(device).eval()
    view = PlainModelView(start, recipe.train.loss_chunk_tokens)
    summary: dict[str, Any] = {}
    held_reference = None
    if held:
        held_reference = pair_logprobs(view, held, device, dtype)
        summary["heldout_before"] = preference_accuracy(held_reference)
    reference, frozen = None, None
    if d.reference == "frozen":
        frozen = start.requires_grad_(False)
    else:
        reference = _cached_reference(run_dir, view, train_pairs, device, dtype, log,
                                      recipe.log.progress)
    del start, view
    objective = DPOObjective(d.beta, d.nll_weight, frozen)
    task = DPOTask(train_pairs, reference, encoder, objective, recipe.train.batch_size, recipe.data.seed, report)

    def validate(runner) -> Callable[[], dict[str, float]] | None:
        if not held:
            return None
        return lambda: preference_accuracy(pair_logprobs(runner, held, runner.device,
                                                         runner.autocast_dtype), held_reference)

    loop_summary, _ = run_task(task, recipe, raw_recipe, config, init_from, run_dir, validate=validate,
                               name="dpo", log=log)
    summary.update(loop_summary)
    summary["data"] = report
    if held:
        log(f"held-out preference accuracy: {summary['heldout_before']['preference_accuracy']:.3f} before, "
            f"{loop_summary.get('preference_accuracy', float('nan')):.3f} after ({len(held)} pairs)")
    write_summary(run_dir, summary)
    return summary


def _cached_reference(run_dir: Path, view: ModelView, pairs: list[EncodedPair], device, dtype,
                      log, progress: bool = True) -> torch.Tensor:
    """The reference pass, or its saved result when resuming on the same data."""
    path = run_dir / REFERENCE_FILE
    digest = _pairs_digest(pairs)
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved.get("digest") == digest:
            return saved["logprobs"]
        log(f"{path} was computed for other data; recomputing")
    logprobs = pair_logprobs(view, pairs, device, dtype, desc="reference log-probs" if progress else "")
    if rank_and_world()[0] == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"digest": digest, "logprobs": logprobs}, path)
    return logprobs

"""The seam between the training loop and what is trained: `Objective` and `TrainTask`.

The loop (`pasture.train.loop`) owns everything a trainer shares: learning-rate
schedule, gradient accumulation, clipping, the step guard, metrics, checkpoints and
exact resume. The runner (`pasture.train.runner`) owns the parallel layout. A task
brings only what differs between pre-training, SFT, reward modelling and DPO:

- `Objective`: how many targets a micro-batch has, and its summed loss. The loop
  divides every micro-batch's loss by the target count of the whole step (all
  micro-batches, all data-parallel ranks) before backward, so gradient accumulation
  and data parallelism give the gradient of the mean loss over the step's targets.
- `TrainTask`: the objective, optionally a wrapper around the Transformer (a reward
  model's scalar head, ...), and a resumable source of each step's micro-batches.

A minimal custom objective (a reward model's pairwise loss over a scalar head):

    class PairwiseReward:
        def count_targets(self, batch):               # one target per preference pair
            return batch["chosen"].shape[0]

        def loss(self, model, batch):                  # model: the task's module, as wrapped
            chosen = model.module(batch["chosen"])     # scores [pairs]
            rejected = model.module(batch["rejected"])
            margin = chosen - rejected
            return LossOutput(-F.logsigmoid(margin).sum(), {"accuracy": (margin > 0).sum()})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from pasture.model.llama import AttentionMask
from pasture.train.loss import IGNORE_INDEX

Batch = dict[str, Any]  # tensors [rows, ...]; the runner moves them to the device


@dataclass
class LossOutput:
    """One micro-batch's loss on this rank.

    loss_sum: the loss summed over this micro-batch's targets (not averaged).
    metrics: extra values summed over the micro-batch; the loop sums them over the step's
        micro-batches and data-parallel ranks, divides by the step's target count and
        writes them into the `train` records of metrics.jsonl under their own names.
    """

    loss_sum: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class ModelView(Protocol):
    """What an objective sees of the model on this rank; the parallel layout stays behind it."""

    module: nn.Module  # the task's model (a Transformer or its wrapper), sharded as the layout says

    def token_loss_sum(self, inputs: torch.Tensor, targets: torch.Tensor,
                       document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Summed next-token cross-entropy of the Transformer over `targets` (IGNORE_INDEX
        skipped): chunked, vocabulary-parallel under TP, this rank's tokens under CP."""

    def hidden_states(self, inputs: torch.Tensor, positions: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        """Final hidden states [B, T, dim] of rows that bring their own rotary positions and
        attention mask (tree-packed rows, `pasture.model.tree`); whole rows on every rank."""

    def hidden_loss_sum(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of `hidden_states` output against `targets` (IGNORE_INDEX skipped)."""


class Objective(Protocol):
    def count_targets(self, batch: Batch) -> int:
        """How many targets `loss` sums over in `batch` (known before the forward pass)."""

    def loss(self, model: ModelView, batch: Batch) -> LossOutput:
        """The summed loss of one micro-batch, computed under the runner's autocast."""


@dataclass
class StepBatches:
    """One optimizer step's data on this rank.

    micro_batches: read in the order given, each `split.rows` rows (`MicroBatching`).
    tokens: tokens of the whole step over all data-parallel ranks (tokens_seen, throughput).
    seq_len: the row length, for the MFU estimate.
    metrics: values of this step for the `train` record (e.g. batch_size).
    """

    micro_batches: list[Batch]
    tokens: int
    seq_len: int
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MicroBatching:
    """How a step of `batch_size` rows is read on one rank: `count` reads of `rows` rows."""

    rows: int
    count: int


class TrainTask(Protocol):
    """What one kind of training brings to the shared loop."""

    objective: Objective

    def wrap_model(self, transformer: nn.Module) -> nn.Module:
        """The module to train around the Transformer (return it unchanged for language
        modelling). A wrapper keeps the Transformer as a submodule and defines
        `init_weights(buffer_device)`, which initialises its own parameters and the Transformer's."""

    def next_step(self, step: int, tokens_seen: int, split: Callable[[int], MicroBatching],
                  annealing: bool = False) -> StepBatches:
        """This rank's micro-batches for `step`; `split(batch_size)` says how to cut a batch
        of `batch_size` rows (all ranks together) into this rank's micro-batches. `annealing`:
        the step is one of the run's final annealing steps, as the loop planned them."""

    def state_dict(self) -> dict[str, Any]:
        """Everything `next_step` needs to continue exactly (loader positions); saved in
        every checkpoint's train state."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint's train state (it holds the keys `state_dict` gave)."""

    def write_run_files(self, run_dir: Path) -> None:
        """Files the run folder keeps beside its checkpoints (e.g. the tokenizer); rank 0 only."""


class NextTokenObjective:
    """Next-token cross-entropy over the targets that are not IGNORE_INDEX: pre-training,
    and SFT when the prompt tokens' targets are masked with IGNORE_INDEX. The only objective
    pipeline parallelism carries (its last stage sees hidden states and targets alone)."""

    def __init__(self, document_mask: bool = True) -> None:
        self.document_mask = document_mask

    def count_targets(self, batch: Batch) -> int:
        return int((batch["targets"] != IGNORE_INDEX).sum())

    def document_ids(self, batch: Batch) -> torch.Tensor | None:
        """The document ids attention stays within, or None for plain causal attention."""
        return batch.get("document_ids") if self.document_mask else None

    def loss(self, model: ModelView, batch: Batch) -> LossOutput:
        return LossOutput(model.token_loss_sum(batch["inputs"], batch["targets"], self.document_ids(batch)))

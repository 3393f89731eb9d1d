"""Held-out loss and bits per byte of a language model over validation batches."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from pasture.runtime import autocast
from pasture.train.loss import IGNORE_INDEX, cross_entropy_sum

BatchLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def evaluate(model: nn.Module, val_loader, device: torch.device, autocast_dtype: torch.dtype | None,
             batch_loss: BatchLoss | None = None) -> dict[str, float]:
    """Held-out loss (nats/token) and bits per byte over the validation batches.

    `batch_loss(inputs, targets, document_ids)` gives the summed loss of one batch when the
    model is split over devices (every rank then evaluates every batch; `Runner.eval_batch_loss`);
    default: the model's own forward.
    """
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for batch in val_loader:
        inputs = batch["inputs"].to(device)
        targets = batch["targets"].to(device)
        if batch_loss is not None:
            total += batch_loss(inputs, targets, batch["document_ids"].to(device)).double().cpu()
        else:
            with autocast(device, autocast_dtype):
                hidden = model(inputs, batch["document_ids"].to(device), return_hidden=True)
                total += cross_entropy_sum(hidden, model.output.weight, targets).double().cpu()
        count += int((targets != IGNORE_INDEX).sum())
    model.train()
    loss = (total / max(count, 1)).item()
    bpb = (total / math.log(2) / max(val_loader.bytes, 1)).item()
    return {"val_loss": loss, "val_bpb": bpb, "val_tokens": count, "val_bytes": val_loader.bytes}

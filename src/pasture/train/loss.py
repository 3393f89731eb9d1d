"""Cross-entropy over a large vocabulary without materialising all fp32 logits at once.

The output projection and the loss run chunk by chunk of rows, and the gradients of each
chunk are taken in the same pass, while its logits are at hand: the forward returns the
summed loss and keeps only the gradients for the hidden states ([tokens, dim]) and the
output weight ([vocab, dim], fp32). No [tokens, 128K] float tensor outlives its chunk, and
unlike checkpointing the chunks, nothing is recomputed in the backward (for the 1B preset
the output projection's forward is about 7% of a step's FLOPs).

With `compiled=True` (what `train.compile` turns on), the elementwise work on each chunk's
logits (fp32 cast, log-sum-exp, softmax, one-hot, cast back) is one torch.compile'd
function, fused into a few passes over the logits instead of about ten.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

IGNORE_INDEX = -100


def _loss_and_logit_grads(logits: torch.Tensor, targets: torch.Tensor, vocab_start: int = 0,
                          group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss of one chunk's logits [rows, vocab] and d loss / d logits = softmax -
    one_hot(target), zero on ignored rows, in the logits' dtype. Works in place on the fp32
    copy: one exp pass gives both the log-sum-exp and the softmax.

    Under tensor parallelism `logits` are this rank's slice of the vocabulary, starting at
    `vocab_start`, and the row maxima, sums and target logits are all-reduced over `group`.
    """
    probs = logits.float()
    valid = targets != IGNORE_INDEX
    local_targets = targets - vocab_start
    owned = valid & (local_targets >= 0) & (local_targets < probs.shape[1])  # the target is in this slice
    safe_targets = torch.where(owned, local_targets, 0).unsqueeze(1)
    target_logits = torch.where(owned, probs.gather(1, safe_targets).squeeze(1), 0.0)
    peak = probs.amax(dim=-1, keepdim=True)
    if group is not None:
        dist.all_reduce(peak, dist.ReduceOp.MAX, group=group)
        dist.all_reduce(target_logits, group=group)
    probs = probs.sub_(peak).exp_()
    norm = probs.sum(dim=-1, keepdim=True)
    if group is not None:
        dist.all_reduce(norm, group=group)
    loss = torch.where(valid, (peak + norm.log()).squeeze(1) - target_logits, 0.0).sum()
    probs.div_(norm.masked_fill_(~valid.unsqueeze(1), float("inf")))  # ignored rows: 0
    probs.scatter_add_(1, safe_targets, -owned.unsqueeze(1).to(probs.dtype))
    return loss, probs.to(logits.dtype)


@functools.cache
def _compiled_loss_and_logit_grads():
    return torch.compile(_loss_and_logit_grads)


@dataclass(frozen=True)
class _Chunking:
    tokens: int  # rows per chunk
    compiled: bool = False
    vocab_start: int = 0  # under TP: where this rank's slice of the vocabulary starts
    group: Any = None  # under TP: the ranks that share the vocabulary
    grads: bool = True  # False without autograd (evaluation): the loss only


class _LinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(hidden @ weight.T, targets)) with its gradients taken in the forward;
    under TP, `weight` is this rank's rows of the vocabulary (see `_loss_and_logit_grads`)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunking: _Chunking) -> torch.Tensor:
        device_type = hidden.device.type
        matmul_dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
                        else hidden.dtype)
        matmul_weight = weight.to(matmul_dtype)  # cast once, as autocast would for every chunk
        loss_and_grads = _compiled_loss_and_logit_grads() if chunking.compiled else _loss_and_logit_grads
        grad_hidden = torch.empty_like(hidden) if chunking.grads else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if chunking.grads else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(device_type, enabled=False):
            for start in range(0, hidden.shape[0], chunking.tokens):
                end = start + chunking.tokens
                rows = hidden[start:end].to(matmul_dtype)
                loss, grad_logits = loss_and_grads(rows @ matmul_weight.T, targets[start:end],
                                                   chunking.vocab_start, chunking.group)
                total += loss
                if chunking.grads:
                    grad_hidden[start:end] = grad_logits @ matmul_weight
                    grad_weight += grad_logits.T @ rows
        if chunking.grads:
            if chunking.group is not None:  # each slice of the vocabulary adds its part of the hidden gradient
                dist.all_reduce(grad_hidden, group=chunking.group)
            ctx.save_for_backward(grad_hidden, grad_weight)
            ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_total.to(grad_hidden.dtype), (grad_weight * grad_total).to(ctx.weight_dtype),
                None, None)


def _apply(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scored_only: bool,
           **chunking) -> torch.Tensor:
    grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if scored_only:
        keep = (targets != IGNORE_INDEX).nonzero().squeeze(1)
        hidden, targets = hidden.index_select(0, keep), targets.index_select(0, keep)
    return _LinearCrossEntropy.apply(hidden, weight, targets, _Chunking(grads=grads, **chunking))


def cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                      chunk_tokens: int = 8192, compiled: bool = False, scored_only: bool = False) -> torch.Tensor:
    """Summed next-token loss of `hidden` [..., dim] projected by `weight` [vocab, dim] against
    `targets` [...] (IGNORE_INDEX positions contribute nothing), `chunk_tokens` rows at a time.

    scored_only: project only the rows with a target. Worth its index (a device sync) when
    most rows are masked, as in post-training, where prompts carry no loss."""
    return _apply(hidden, weight, targets, scored_only, tokens=chunk_tokens, compiled=compiled)


def vocab_parallel_cross_entropy_sum(hidden: torch.Tensor, weight_shard: torch.Tensor, targets: torch.Tensor,
                                     vocab_start: int, group, chunk_tokens: int = 8192,
                                     scored_only: bool = False) -> torch.Tensor:
    """`cross_entropy_sum` with the output projection split over the vocabulary (tensor
    parallelism): every rank holds all of `hidden`'s rows and `weight_shard`, its vocabulary
    rows from `vocab_start`; no rank ever holds logits of the whole vocabulary. The result
    (and the gradient of `hidden`) is the same on every rank of `group`."""
    return _apply(hidden, weight_shard, targets, scored_only, tokens=chunk_tokens, vocab_start=vocab_start, group=group)

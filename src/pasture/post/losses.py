"""The post-training objectives, as formulas over model outputs.

Each loss takes the step's totals (`n_targets`, `n_pairs`, `n_chosen_tokens`) so that a
step split into gradient-accumulation micro-batches sums to exactly the loss of one big
batch: a micro-batch contributes its *sum* divided by the whole step's count.

- SFT: cross-entropy on the masked (assistant) targets / target tokens in the step (the
  core's next-token objective; the SFT task only masks the targets).
- Reward model: Bradley–Terry −log σ(r_chosen − r_rejected), no margin (Llama 3).
- DPO: −log σ(β[(log π_c − log π_ref,c) − (log π_r − log π_ref,r)]) per pair, plus
  `nll_weight` × the chosen responses' negative log-likelihood per token (Llama 3: 0.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor,
                       n_pairs: int | torch.Tensor | None = None) -> torch.Tensor:
    """Sum over pairs of −log σ(r_c − r_r), divided by the step's pair count (default: these)."""
    total = -F.logsigmoid(chosen_scores.float() - rejected_scores.float()).sum()
    return total / (chosen_scores.numel() if n_pairs is None else n_pairs)


def read_scores(values: torch.Tensor, score_index: torch.Tensor) -> torch.Tensor:
    """A reward model's score per row of `values` [N, T]: the value at each row's
    `score_index` (the response's last token), not at the row's last position, which
    may be a pad (and with pad == eos, "the first eos" is wrong too)."""
    return values.gather(1, score_index.to(values.device).unsqueeze(1)).squeeze(1)


@dataclass
class DPOTerms:
    """One micro-batch's loss (its share of the step's) and the sums behind the metrics."""

    loss: torch.Tensor  # dpo + nll_weight * nll, the micro-batch's share
    dpo_loss_sum: torch.Tensor  # summed −log σ over pairs (detached)
    nll_sum: torch.Tensor  # summed chosen-token NLL (detached)
    chosen_rewards: torch.Tensor  # β (log π_c − log π_ref,c) per pair (detached)
    rejected_rewards: torch.Tensor


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, chosen_nll_sum: torch.Tensor, *, beta: float = 0.1,
             nll_weight: float = 0.2, n_pairs: int | torch.Tensor | None = None,
             n_chosen_tokens: int | torch.Tensor | None = None) -> DPOTerms:
    """DPO's sigmoid loss plus the NLL term, from summed response log-probs per pair.

    `chosen_nll_sum` is the summed NLL of the chosen responses' tokens; it is divided by
    the step's chosen-token count (a per-token mean, as TRL's "sft" term), the sigmoid
    term by the step's pair count.
    """
    chosen_logratio = policy_chosen - reference_chosen
    rejected_logratio = policy_rejected - reference_rejected
    per_pair = -F.logsigmoid(beta * (chosen_logratio - rejected_logratio))
    n_pairs = per_pair.numel() if n_pairs is None else n_pairs
    loss = per_pair.sum() / n_pairs
    if nll_weight:
        if n_chosen_tokens is None:
            raise ValueError("dpo_loss: an NLL term needs the step's chosen-token count (n_chosen_tokens)")
        loss = loss + nll_weight * chosen_nll_sum / n_chosen_tokens
    return DPOTerms(loss=loss, dpo_loss_sum=per_pair.detach().sum(), nll_sum=chosen_nll_sum.detach(),
                    chosen_rewards=beta * chosen_logratio.detach(), rejected_rewards=beta * rejected_logratio.detach())

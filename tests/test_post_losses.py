"""Post-training losses against their formulas and hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from post_fixtures import one_thread, tiny_model
from pasture.post.losses import bradley_terry_loss, dpo_loss, read_scores
from pasture.post.trainer import PlainModelView
from pasture.post.reward_model import RewardModel
from pasture.train.loss import IGNORE_INDEX

LN2 = math.log(2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def test_bradley_terry_hand_values():
    loss = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    # (-log σ(1) - log σ(0)) / 2 = (0.3132617 + 0.6931472) / 2
    assert loss.item() == pytest.approx(0.50320443, abs=1e-7)
    assert bradley_terry_loss(torch.tensor([2.5]), torch.tensor([2.5])).item() == pytest.approx(LN2, abs=1e-7)
    # no margin term: a pair the model ranks right by a lot costs almost nothing
    assert bradley_terry_loss(torch.tensor([20.0]), torch.tensor([0.0])).item() < 1e-8


def test_dpo_hand_values():
    terms = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]),
                     chosen_nll_sum=torch.tensor(6.0), beta=0.1, nll_weight=0.2, n_chosen_tokens=3)
    # Δ = (-1 + 1.5) - (-2 + 1.5) = 1; -log σ(0.1) = 0.6443967; NLL 6 / 3 tokens * 0.2 = 0.4
    assert terms.dpo_loss_sum.item() == pytest.approx(0.64439666, abs=1e-7)
    assert terms.loss.item() == pytest.approx(0.64439666 + 0.4, abs=1e-6)
    assert terms.chosen_rewards.item() == pytest.approx(0.05) and terms.rejected_rewards.item() == pytest.approx(-0.05)


def test_dpo_policy_equal_reference_is_exactly_ln2():
    logps = torch.tensor([-12.25, -3.5, -40.0])
    terms = dpo_loss(logps, logps - 1, logps, logps - 1, torch.tensor(0.0), nll_weight=0.0)
    assert terms.loss.item() == torch.tensor(LN2).item()  # ln 2 in float32, exactly (TRL: 0.6931471824645996)


def test_sft_accumulation_equals_one_big_batch():
    """Two micro-batches with very different target counts, each summed and divided by the
    step's count (what the core does with SFT's masked targets), give the loss and gradients
    of the whole batch at once."""
    torch.manual_seed(0)
    model = tiny_model()
    inputs = torch.randint(0, 500, (4, 16))
    targets = torch.randint(0, 500, (4, 16))
    targets[:2, :14] = IGNORE_INDEX  # first half: 4 targets, second half: 32
    n = int((targets != IGNORE_INDEX).sum())

    def grads(parts):
        model.zero_grad()
        total = 0.0
        for rows in parts:
            loss = PlainModelView(model).token_loss_sum(inputs[rows], targets[rows]) / n  # the SFT step's share
            loss.backward()
            total += loss.item()
        return total, [p.grad.clone() for p in model.parameters()]

    whole, whole_grads = grads([slice(0, 4)])
    split, split_grads = grads([slice(0, 2), slice(2, 4)])
    assert split == pytest.approx(whole, abs=1e-6)
    for a, b in zip(whole_grads, split_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # the formula: mean cross-entropy over the batch's targets
    logits = model(inputs)
    assert whole == pytest.approx(F.cross_entropy(logits.reshape(-1, 512), targets.reshape(-1)).item(), abs=1e-5)
    # per-micro-batch means would weight the 4 targets as much as the 32: not the same loss
    per_micro = sum(F.cross_entropy(model(inputs[r]).reshape(-1, 512), targets[r].reshape(-1)).item()
                    for r in (slice(0, 2), slice(2, 4))) / 2
    assert abs(per_micro - whole) > 1e-3


def test_reward_scores_are_read_at_score_index():
    values = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.5, 0.6, 9.0, 9.0]])
    assert read_scores(values, torch.tensor([2, 1])).tolist() == pytest.approx([0.3, 0.6])


def test_reward_model_starts_at_ln2_and_ignores_padding():
    rm = RewardModel(tiny_model())
    tokens = torch.randint(0, 500, (2, 10))
    scores = rm(tokens, torch.tensor([9, 5]))
    assert bradley_terry_loss(scores[:1], scores[1:]).item() == pytest.approx(LN2, abs=1e-7)
    torch.nn.init.normal_(rm.head.weight)
    padded = tokens.clone()
    padded[1, 6:] = 0  # whatever follows the response cannot change its score (causal attention)
    a, b = rm(tokens, torch.tensor([9, 5])), rm(padded, torch.tensor([9, 5]))
    assert a[1].item() == pytest.approx(b[1].item(), abs=1e-5)
    assert "head" not in dict(rm.transformer.named_children())  # the Transformer stays a plain LM

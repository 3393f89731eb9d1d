"""The chunked cross-entropy takes its gradients in the forward pass: they must equal
autograd's through the full logits, with ignored targets, chunks, autocast and tied weights."""

import pytest
import torch
import torch.nn.functional as F

from pasture.train.loss import IGNORE_INDEX, cross_entropy_sum


def _problem(tokens: int = 300, dim: int = 32, vocab: int = 500):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, dim, generator=gen)
    weight = torch.randn(vocab, dim, generator=gen) * 0.2
    targets = torch.randint(0, vocab, (tokens,), generator=gen)
    targets[::7] = IGNORE_INDEX
    return hidden, weight, targets


def _grads(loss_fn, hidden, weight, targets):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = loss_fn(h, w, targets)
    (loss / len(targets)).backward()
    return loss.detach(), h.grad, w.grad


def _reference(h, w, t):
    return F.cross_entropy(h @ w.T, t, ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("scored_only", [False, True])
@pytest.mark.parametrize("chunk_tokens", [64, 100, 8192])
def test_loss_and_gradients_equal_full_logits(chunk_tokens, scored_only):
    problem = _problem()
    loss, grad_hidden, grad_weight = _grads(
        lambda h, w, t: cross_entropy_sum(h, w, t, chunk_tokens, scored_only=scored_only), *problem)
    ref_loss, ref_hidden, ref_weight = _grads(_reference, *problem)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(grad_hidden, ref_hidden, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_weight, ref_weight, rtol=1e-5, atol=1e-7)
    assert grad_hidden[::7].abs().max() == 0  # ignored positions get no gradient


def test_scored_only_with_every_target_masked_is_zero_with_zero_gradients():
    hidden, weight, targets = _problem()
    loss, grad_hidden, grad_weight = _grads(lambda h, w, t: cross_entropy_sum(h, w, t, 64, scored_only=True),
                                            hidden, weight, torch.full_like(targets, IGNORE_INDEX))
    assert loss == 0 and grad_hidden.abs().max() == 0 and grad_weight.abs().max() == 0


def test_without_gradients_gives_the_same_loss():
    hidden, weight, targets = _problem()
    with torch.no_grad():
        torch.testing.assert_close(cross_entropy_sum(hidden, weight, targets, 64), _reference(hidden, weight, targets))


def test_tied_weight_adds_both_uses():
    """The embedding and the output projection share a weight: both gradients land on it."""
    hidden, weight, targets = _problem()
    ids = torch.randint(0, weight.shape[0], (len(targets),), generator=torch.Generator().manual_seed(1))

    def tied(loss_fn):
        w = weight.clone().requires_grad_()
        (loss_fn(F.embedding(ids, w) + hidden, w, targets) / len(targets)).backward()
        return w.grad

    torch.testing.assert_close(tied(lambda h, w, t: cross_entropy_sum(h, w, t, 64)), tied(_reference),
                               rtol=1e-5, atol=1e-7)


def test_autocast_bf16_tracks_fp32_and_keeps_parameter_dtypes():
    problem = _problem()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grad_hidden, grad_weight = _grads(lambda h, w, t: cross_entropy_sum(h, w, t, 64), *problem)
    ref_loss, ref_hidden, ref_weight = _grads(_reference, *problem)
    assert grad_hidden.dtype == grad_weight.dtype == torch.float32
    assert abs(loss.item() / ref_loss.item() - 1) < 5e-3
    torch.testing.assert_close(grad_weight, ref_weight, rtol=0.05, atol=2e-4)
    torch.testing.assert_close(grad_hidden, ref_hidden, rtol=0.05, atol=2e-4)


def test_bf16_parameters_without_autocast_get_bf16_gradients():
    """FSDP's mixed precision hands the loss bf16 weights and hidden states."""
    hidden, weight, targets = (x.bfloat16() if x.is_floating_point() else x for x in _problem())
    _, grad_hidden, grad_weight = _grads(lambda h, w, t: cross_entropy_sum(h, w, t, 64), hidden, weight, targets)
    _, ref_hidden, ref_weight = _grads(_reference, hidden.float(), weight.float(), targets)
    assert grad_hidden.dtype == grad_weight.dtype == torch.bfloat16
    torch.testing.assert_close(grad_weight.float(), ref_weight, rtol=0.05, atol=2e-4)


def test_compiled_chunk_work_equals_eager():
    """`train.compile` fuses the elementwise work on each chunk's logits with torch.compile."""
    problem = _problem()
    eager = _grads(lambda h, w, t: cross_entropy_sum(h, w, t, 128), *problem)
    compiled = _grads(lambda h, w, t: cross_entropy_sum(h, w, t, 128, compiled=True), *problem)
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _vocab_parallel_rank(rank: int, world: int, init_file: str, results: dict) -> None:
    import torch.distributed as dist

    from pasture.train.loss import vocab_parallel_cross_entropy_sum

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    hidden, weight, targets = _problem()
    rows = weight.shape[0] // world
    h = hidden.clone().requires_grad_()
    shard = weight[rank * rows:(rank + 1) * rows].clone().requires_grad_()
    loss = vocab_parallel_cross_entropy_sum(h, shard, targets, rank * rows, dist.group.WORLD, chunk_tokens=64)
    (loss / len(targets)).backward()
    results[rank] = (loss.detach(), h.grad, shard.grad)
    dist.destroy_process_group()


def test_vocabulary_parallel_loss_on_two_ranks_equals_one_device(tmp_path):
    """Tensor parallelism: each rank holds half the vocabulary's rows of the output weight."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_vocab_parallel_rank, args=(2, str(tmp_path / "init"), results), nprocs=2)
        results = dict(results)
    ref_loss, ref_hidden, ref_weight = _grads(_reference, *_problem())
    for rank, (loss, grad_hidden, grad_shard) in results.items():
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-3)
        torch.testing.assert_close(grad_hidden, ref_hidden, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(grad_shard, ref_weight[rank * 250:(rank + 1) * 250], rtol=1e-5, atol=1e-7)

"""Float8 training (torchao) on CPU: losses track full precision, the vocabulary head and
unaligned linears stay nn.Linear, checkpoints load without torchao, resume is exact, and
FSDP with float8 all-gather on two gloo ranks matches one process."""

import shutil
import sys

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torchao.float8")

import test_parallel as gloo  # noqa: E402
from test_pretrain import recipe_args, run_recipe, token_data, train_losses  # noqa: E402, F401 (token_data: fixture)
from token_data import write_progressions  # noqa: E402
from torchao.float8.float8_linear import Float8Linear  # noqa: E402

from pasture import model as pm  # noqa: E402
from pasture import runs  # noqa: E402
from pasture.cli import main  # noqa: E402
from pasture.model.config import preset  # noqa: E402
from pasture.train import checkpoint as ckpt  # noqa: E402
from pasture.train.float8 import apply_float8  # noqa: E402
from pasture.train.validation import evaluate  # noqa: E402

RECIPES = ["rowwise", "tensorwise"]


@pytest.fixture(scope="module")
def full_precision(token_data, tmp_path_factory):
    """Losses of the fp32 run every float8 run is compared with."""
    run = tmp_path_factory.mktemp("fp32") / "run"
    run_recipe(recipe_args(token_data, run, "train.steps=20", "checkpoint.every=20", "log.every=1"))
    return [loss for _, loss in train_losses(run)]


@pytest.mark.parametrize("recipe", RECIPES)
def test_float8_loss_falls_and_tracks_full_precision(token_data, tmp_path, full_precision, recipe):
    run = tmp_path / "run"
    run_recipe(recipe_args(token_data, run, "train.steps=20", "checkpoint.every=20", "log.every=1",
                           f"train.float8={recipe}", "train.dtype=bfloat16"))
    losses = [loss for _, loss in train_losses(run)]
    assert len(losses) == 20 and np.mean(losses[-3:]) < 0.65 * np.mean(losses[:3])
    # float8 rounding moves single steps by up to ~1.5% and the end of the curve by ~0.2%
    np.testing.assert_allclose(losses, full_precision, rtol=0.03)
    assert np.mean(losses[-5:]) == pytest.approx(np.mean(full_precision[-5:]), rel=0.01)
    assert losses != full_precision  # ... but float8 did run


def test_float8_swaps_block_linears_only():
    config = preset("tiny").replace(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, ffn_dim=72,
                                    tie_embeddings=False)
    model = pm.build(config, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swapped = apply_float8(model, "rowwise")
    assert swapped == [f"layers.{i}.attention.{w}" for i in range(2) for w in ("wq", "wk", "wv", "wo")]
    for block in model.layers:
        assert all(isinstance(getattr(block.attention, w), Float8Linear) for w in ("wq", "wk", "wv", "wo"))
        # 64 -> 72 -> 64: not multiples of 16, which float8 matmuls need
        assert all(type(getattr(block.feed_forward, w)) is nn.Linear for w in ("w1", "w2", "w3"))
    assert type(model.output) is nn.Linear  # the vocabulary head stays in high precision
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) and after[k].dtype == v.dtype
                                               for k, v in before.items())
    assert apply_float8(pm.build(config, seed=0), "none") == []


@pytest.mark.parametrize("recipe", RECIPES)
def test_float8_linears_keep_their_master_weight_for_backward(recipe):
    """What `pasture plan` counts: a float8 linear saves the weight itself for backward (no
    low-precision copy to cache), while a plain linear under autocast saves a bf16 copy."""
    config = preset("tiny").replace(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, ffn_dim=192)
    tokens = torch.randint(0, 256, (2, 32))

    def saved_weights(model: nn.Module) -> set[str]:
        by_storage = {p.untyped_storage().data_ptr(): name for name, p in model.named_parameters()}
        saved = set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.add(by_storage.get(t.untyped_storage().data_ptr()))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16):
            model(tokens)
        return saved - {None}

    linears = {f"layers.{i}.{w}.weight" for i in range(2) for w in
               ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")}
    assert not linears & saved_weights(pm.build(config, seed=0))
    model = pm.build(config, seed=0)
    apply_float8(model, recipe)
    assert linears <= saved_weights(model)


def test_bad_float8_settings_are_one_line_errors(token_data, tmp_path, capsys, monkeypatch):
    assert main(["pretrain", *recipe_args(token_data, tmp_path / "run", "train.float8=fp8")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("train.float8 must be one of none, tensorwise, rowwise, got 'fp8'") and "\n" not in err
    assert main(["pretrain", *recipe_args(token_data, tmp_path / "run", "train.float8=rowwise", "parallel.tp=2",
                                          "model.tie_embeddings=false")]) == 2
    assert "train.float8 does not support parallel.tp > 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    monkeypatch.setitem(sys.modules, "torchao.float8", None)  # as if torchao were not installed
    assert main(["pretrain", *recipe_args(token_data, tmp_path / "run", "train.float8=tensorwise")]) == 2
    assert capsys.readouterr().err.strip().endswith("train.float8 needs torchao: pip install 'pasture[float8]' "
                                                    "(or pip install torchao)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("recipe", RECIPES)
def test_float8_resume_equals_uninterrupted_run(token_data, tmp_path, recipe):
    steps = ["train.steps=6", "checkpoint.every=3", "log.every=1", f"train.float8={recipe}"]
    run = tmp_path / "run"
    run_recipe(recipe_args(token_data, run, *steps))
    reference = train_losses(run)
    shutil.rmtree(ckpt.step_dir(run, 6))
    run_recipe(recipe_args(token_data, run, *steps, "resume=\"auto\""))
    assert train_losses(run) == reference


def test_float8_under_selective_checkpointing_gives_the_same_losses(token_data, tmp_path):
    steps = ["train.steps=4", "checkpoint.every=4", "log.every=1", "train.float8=tensorwise"]
    run_recipe(recipe_args(token_data, tmp_path / "plain", *steps))
    run_recipe(recipe_args(token_data, tmp_path / "sac", *steps, "parallel.activation_checkpoint=\"selective\""))
    assert train_losses(tmp_path / "sac") == train_losses(tmp_path / "plain")


def test_float8_checkpoint_loads_without_torchao_conversion(token_data, tmp_path):
    from pasture.serve import Engine, SamplingParams
    from pasture.train.loader import ValidationLoader
    from pasture.train.shards import TokenDataset

    run = tmp_path / "run"
    summary = run_recipe(recipe_args(token_data, run, "train.steps=8", "checkpoint.every=8", "train.float8=rowwise"))
    model, _ = runs.load(run)
    assert not any(isinstance(m, Float8Linear) for m in model.modules())
    state, _ = ckpt.read_model_state(ckpt.latest_valid(run))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # the float8-trained weights score about the same in plain fp32
    val = evaluate(model, ValidationLoader(TokenDataset(token_data, "val"), 4, 64, 4), torch.device("cpu"), None)
    assert val["val_loss"] == pytest.approx(summary["val_loss"], rel=0.01)
    model.eval()
    with Engine(model) as engine:
        assert len(engine.generate([5, 8, 11], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0].token_ids) == 8


def test_fsdp_float8_all_gather_on_two_ranks_matches_one_process_and_resumes(tmp_path):
    """Tensorwise float8 under FSDP all-gathers float8 weights with scales precomputed after
    each step. One row per micro-batch gives every activation scale the same rows in both runs."""
    data = write_progressions(tmp_path / "tokens", gloo.VOCAB, 200, 20, 60)
    init = gloo.initial_weights(tmp_path / "init", tied=True)
    extra = ["train.float8=tensorwise", "train.micro_batch_size=1", "checkpoint.every=2"]
    gloo.one_process(gloo.recipe_args(data, tmp_path / "one", init, *extra))
    gloo.run_distributed(2, gloo.recipe_args(data, tmp_path / "fsdp", init, *extra))
    # float8 rounding can magnify fp32 summation-order differences: 3e-6 here, 1e-3 seen with HSDP
    gloo.assert_same_losses(gloo.losses(tmp_path / "fsdp"), gloo.losses(tmp_path / "one"), rtol=5e-3)

    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "fsdp", resumed)
    shutil.rmtree(ckpt.step_dir(resumed, 4))
    gloo.run_distributed(2, gloo.recipe_args(data, resumed, init, *extra, "resume=\"auto\""))
    assert gloo.losses(resumed) == gloo.losses(tmp_path / "fsdp")
    model, _ = runs.load(tmp_path / "fsdp")  # sharded float8 weights load as a plain model
    assert not any(isinstance(m, Float8Linear) for m in model.modules())

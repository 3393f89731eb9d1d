"""Distributed pre-training on CPU: gloo processes launched by torchrun, compared with one process.

Every multi-process run starts from the same saved initial weights (model.init_from) as
its one-process reference and trains on the same global batches, so the losses must agree
up to float summation order.
"""

import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from token_data import write_progressions
import torch

from pasture.cli import main
from pasture.model import build, save
from pasture.model.config import preset
from pasture.model.llama import Transformer
from pasture.train import checkpoint as ckpt
from pasture.train import parallel as par
from pasture.train import pretrain as pt
from pasture.train.recipe import build_model_config, check_batch_shapes, load_recipe, parse_recipe
from pasture.train.metrics import read_metrics

VOCAB = 256
MODEL = ["model.dim=64", "model.n_layers=4", "model.n_heads=4", "model.n_kv_heads=2", "model.multiple_of=32",
         f"model.vocab_size={VOCAB}"]
UNTIED = ["model.tie_embeddings=false"]
TOLERANCE = 2e-5  # relative; fp32 sums in another order


@pytest.fixture(scope="module")
def token_data(tmp_path_factory):
    return write_progressions(tmp_path_factory.mktemp("tokens"), VOCAB, 200, 20, 60)


def initial_weights(folder, tied: bool):
    """One random initialisation saved as a model folder, shared by every run of a comparison."""
    if not folder.exists():
        config = preset("tiny").replace(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, multiple_of=32,
                                        vocab_size=VOCAB, tie_embeddings=tied)
        save(build(config, seed=1), folder)
    return folder


def recipe_args(data, run_dir, init, *extra):
    return [f"data.train=[\"{data}\"]", f"log.dir=\"{run_dir}\"", "log.progress=false", "log.tensorboard=false", "log.every=1",
            "train.seq_len=32", "train.batch_size=4", "train.batch_ramp=[]", "train.threads=1", "train.steps=4",
            "train.anneal_steps=0", "optim.lr=0.01", "optim.warmup_steps=1", "eval.every=0", "eval.batches=2",
            "eval.batch_size=2", "checkpoint.every=100", "checkpoint.anneal_every=0", f"model.init_from=\"{init}\"",
            *MODEL, *extra]


def one_process(args):
    raw = load_recipe("tiny", args)
    return pt.pretrain(parse_recipe(raw), raw, log=lambda *_: None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, args, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISTRIBUTED_DEBUG": "OFF", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
           "-m", "pasture.cli", "pretrain", "tiny", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def run_distributed(nproc: int, args):
    done = torchrun(nproc, args)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir, "train")]


def assert_same_losses(got, want, rtol=TOLERANCE):
    assert [s for s, _ in got] == [s for s, _ in want]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=rtol)


def test_fsdp_on_two_ranks_matches_one_process(token_data, tmp_path):
    init = initial_weights(tmp_path / "init", tied=True)  # tied embeddings stay tied under FSDP
    extra = ["eval.every=2"]
    summary = one_process(recipe_args(token_data, tmp_path / "one", init, *extra))
    run_distributed(2, recipe_args(token_data, tmp_path / "fsdp", init, *extra))
    assert_same_losses(losses(tmp_path / "fsdp"), losses(tmp_path / "one"))
    ref = losses(tmp_path / "one")
    assert ref[-1][1] < ref[0][1]  # it learns: the comparison is not between two constant curves
    fsdp_val = [r["val_loss"] for r in read_metrics(tmp_path / "fsdp", "val")]
    one_val = [r["val_loss"] for r in read_metrics(tmp_path / "one", "val")]
    np.testing.assert_allclose(fsdp_val, one_val, rtol=TOLERANCE)
    assert summary["tokens_seen"] == 4 * 4 * 32
    norms = [r["grad_norm"] for r in read_metrics(tmp_path / "fsdp", "train")]
    np.testing.assert_allclose(norms, [r["grad_norm"] for r in read_metrics(tmp_path / "one", "train")], rtol=1e-4)


def test_torchrun_with_one_process_takes_the_fsdp_path_and_matches(token_data, tmp_path):
    """One GPU under torchrun runs FSDP2 on a mesh of one (the multi-GPU code path)."""
    init = initial_weights(tmp_path / "init", tied=True)
    one_process(recipe_args(token_data, tmp_path / "one", init, "eval.every=2"))
    done = run_distributed(1, recipe_args(token_data, tmp_path / "fsdp1", init, "eval.every=2"))
    assert "= 1 GPUs, FSDP2" in done.stdout + done.stderr
    assert_same_losses(losses(tmp_path / "fsdp1"), losses(tmp_path / "one"))


def test_tensor_parallel_two_ranks_matches_one_process(token_data, tmp_path):
    init = initial_weights(tmp_path / "init", tied=False)
    # a small loss chunk: the vocabulary-parallel loss runs 4 chunks per micro-batch
    extra = [*UNTIED, "parallel.tp=2", "parallel.dp_shard=1", "eval.every=2", "train.loss_chunk_tokens=32"]
    one_process(recipe_args(token_data, tmp_path / "one", init, *UNTIED, "eval.every=2"))
    run_distributed(2, recipe_args(token_data, tmp_path / "tp", init, *extra))
    assert_same_losses(losses(tmp_path / "tp"), losses(tmp_path / "one"))
    np.testing.assert_allclose([r["val_loss"] for r in read_metrics(tmp_path / "tp", "val")],
                               [r["val_loss"] for r in read_metrics(tmp_path / "one", "val")], rtol=TOLERANCE)


@pytest.mark.parametrize("schedule", ["1F1B", "Interleaved1F1B"])
def test_pipeline_two_ranks_matches_one_process(token_data, tmp_path, schedule):
    init = initial_weights(tmp_path / "init", tied=False)
    one_process(recipe_args(token_data, tmp_path / "one", init, *UNTIED, "train.micro_batch_size=1", "eval.every=2"))
    run_distributed(2, recipe_args(token_data, tmp_path / "pp", init, *UNTIED, "parallel.pp=2", "eval.every=2",
                                   f"parallel.pp_schedule=\"{schedule}\"", "train.micro_batch_size=1"))
    assert_same_losses(losses(tmp_path / "pp"), losses(tmp_path / "one"))
    np.testing.assert_allclose([r["val_loss"] for r in read_metrics(tmp_path / "pp", "val")],
                               [r["val_loss"] for r in read_metrics(tmp_path / "one", "val")], rtol=TOLERANCE)


@pytest.mark.parametrize("document_mask", [True, False])
def test_context_parallel_two_ranks_matches_one_process(token_data, tmp_path, document_mask):
    init = initial_weights(tmp_path / "init", tied=True)
    extra = ["eval.every=2", f"train.document_mask={str(document_mask).lower()}"]
    one_process(recipe_args(token_data, tmp_path / "one", init, *extra))
    run_distributed(2, recipe_args(token_data, tmp_path / "cp", init, *extra, "parallel.cp=2", "parallel.dp_shard=1"))
    assert_same_losses(losses(tmp_path / "cp"), losses(tmp_path / "one"))
    np.testing.assert_allclose([r["val_loss"] for r in read_metrics(tmp_path / "cp", "val")],
                               [r["val_loss"] for r in read_metrics(tmp_path / "one", "val")], rtol=TOLERANCE)


def test_context_parallel_chunks_cover_the_sequence_and_mask_like_the_whole():
    """Each rank's queries see exactly the keys the whole sequence's mask gives them."""
    import torch

    from pasture.model.llama import build_attention_mask

    docs = torch.tensor([[0] * 5 + [1] * 9 + [2] * 2, [3] * 16])
    whole = build_attention_mask(docs, 16, "sdpa", torch.device("cpu")).dense
    cp = par.ContextParallel(group=None, size=4, rank=0, attention_backend="sdpa")
    held = [cp.token_indices(16, r, torch.device("cpu")).tolist() for r in range(4)]
    assert held[0] == [0, 1, 14, 15] and held[3] == [6, 7, 8, 9]
    assert sorted(i for h in held for i in h) == list(range(16))
    for rank in range(4):
        mine = torch.tensor(held[rank])
        part = build_attention_mask(docs, 16, "sdpa", torch.device("cpu"), query_positions=mine).dense
        assert torch.equal(part, whole[:, :, mine])
    # load balance: every rank's queries have the same number of causal keys
    assert len({sum(i + 1 for i in h) for h in held}) == 1


def test_context_parallel_flex_mask_attends_like_the_whole_sequence():
    """The FlexAttention block mask (the GPU path) for one rank's queries gives the rows
    of whole-sequence attention at those positions."""
    import torch
    import torch.nn.functional as F

    from pasture.model.llama import _flex_attention, build_attention_mask

    torch.manual_seed(0)
    docs = torch.tensor([[0] * 100 + [1] * 156, [2] * 256])
    q, k, v = (torch.randn(2, 4, 256, 16) for _ in range(3))
    whole = build_attention_mask(docs, 256, "sdpa", torch.device("cpu")).dense
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=whole)
    cp = par.ContextParallel(group=None, size=2, rank=1, attention_backend="flex")
    mine = cp.token_indices(256, 1, torch.device("cpu"))
    mask = build_attention_mask(docs, 256, "flex", torch.device("cpu"), query_positions=mine)
    with torch.no_grad():
        got = _flex_attention(q[:, :, mine], k, v, mask.block_mask, enable_gqa=False)
    torch.testing.assert_close(got, want[:, :, mine], rtol=1e-5, atol=1e-5)


def test_checkpoint_from_two_ranks_resumes_on_one_and_four(token_data, tmp_path):
    init = initial_weights(tmp_path / "init", tied=True)
    one_process(recipe_args(token_data, tmp_path / "straight", init))
    want = dict(losses(tmp_path / "straight"))

    saved = tmp_path / "saved"
    run_distributed(2, recipe_args(token_data, saved, init, "checkpoint.every=3", "parallel.async_checkpoint=true"))
    assert [s for s, _ in ckpt.list_checkpoints(saved)] == [3, 4]
    shutil.rmtree(ckpt.step_dir(saved, 4))  # resume from step 3
    checkpoint = ckpt.latest_valid(saved)
    assert sorted(p.name for p in checkpoint.glob("train_state_rank*.pt")) == [
        "train_state_rank00000.pt", "train_state_rank00001.pt"]

    for world in (1, 4):
        run = tmp_path / f"resumed{world}"
        shutil.copytree(saved, run)
        args = recipe_args(token_data, run, init, "resume=\"auto\"")
        one_process(args) if world == 1 else run_distributed(world, args)
        got = dict(losses(run))
        assert sorted(got) == [1, 2, 3, 4]
        np.testing.assert_allclose(got[4], want[4], rtol=TOLERANCE)


@pytest.mark.parametrize("layout", [["parallel.tp=2", "parallel.dp_shard=1"],
                                    ["parallel.pp=2", "parallel.dp_shard=1", "train.micro_batch_size=1"],
                                    ["parallel.cp=2", "parallel.dp_shard=1"]], ids=["tp2", "pp2", "cp2"])
def test_checkpoint_from_fsdp_resumes_under_another_layout(token_data, tmp_path, layout):
    """DCP reshards at load: FSDP shards saved on 2 ranks become TP shards, pipeline stages
    or context-parallel replicas, and the next step's loss is the uninterrupted run's."""
    init = initial_weights(tmp_path / "init", tied=False)
    micro = [a for a in layout if a.startswith("train.")]
    one_process(recipe_args(token_data, tmp_path / "straight", init, *UNTIED, *micro))
    want = dict(losses(tmp_path / "straight"))
    run = tmp_path / "run"
    run_distributed(2, recipe_args(token_data, run, init, *UNTIED, *micro, "checkpoint.every=3"))
    shutil.rmtree(ckpt.step_dir(run, 4))  # resume from step 3
    run_distributed(2, recipe_args(token_data, run, init, *UNTIED, *layout, "resume=\"auto\""))
    got = dict(losses(run))
    assert sorted(got) == [1, 2, 3, 4]
    np.testing.assert_allclose(got[4], want[4], rtol=TOLERANCE)


def test_pipeline_stages_chained_run_the_models_own_forward():
    """Each stage is the model with the other stages' layers deleted; chained, the stages give
    the whole model's hidden states exactly (one forward, in model/llama.py)."""
    model = build(preset("tiny").replace(dim=64, n_layers=5, n_heads=4, n_kv_heads=2, multiple_of=32,
                                         vocab_size=VOCAB, tie_embeddings=False), seed=3)
    tokens = torch.randint(0, VOCAB, (2, 24))
    document_ids = torch.tensor([[0] * 10 + [1] * 14, [0] * 24])
    ranges = par.stage_layer_ids(5, 3)
    stages = [par.PipelineStageModule(model, r, first=i == 0, last=i == 2) for i, r in enumerate(ranges)]
    assert all(isinstance(s, Transformer) for s in stages)  # the model's forward, not a second one
    assert [list(s.layers._modules) for s in stages] == [[str(i) for i in r] for r in ranges]
    h = tokens
    for stage in stages:
        h = stage(h, document_ids)
    assert torch.equal(h, model(tokens, document_ids, return_hidden=True))


def test_layout_arithmetic_and_coordinates():
    layout = par.resolve_layout(par.ParallelConfig(dp_replicate=2, tp=8, pp=16), 16384)
    assert (layout.dp_shard, layout.dp, layout.world_size) == (64, 128, 16384)
    small = par.Layout(dp_replicate=1, dp_shard=2, tp=2, cp=1, pp=2)
    # row-major over (pp, dp_replicate, dp_shard, cp, tp): tp neighbours are consecutive ranks
    assert [small.coordinates(r)["tp"] for r in range(8)] == [0, 1] * 4
    assert [small.coordinates(r)["dp"] for r in range(8)] == [0, 0, 1, 1] * 2
    assert [small.coordinates(r)["pp"] for r in range(8)] == [0] * 4 + [1] * 4
    assert par.stage_layer_ids(126, 16)[0] == range(0, 7)  # 405B: one block fewer on the first stage
    assert par.stage_layer_ids(126, 16)[-1] == range(119, 126)  # ... and on the last
    assert all(len(r) == 8 for r in par.stage_layer_ids(126, 16)[1:-1])
    assert par.stage_layer_ids(4, 2) == [range(0, 2), range(2, 4)]


@pytest.mark.parametrize("overrides, world, message", [
    (["parallel.tp=3", "parallel.dp_shard=1"], 3, "does not divide model.n_heads=4"),
    (["parallel.tp=4", "parallel.dp_shard=1"], 4, "does not divide model.n_kv_heads=2"),
    (["parallel.tp=2"], 3, "world size 3 is not divisible by dp_replicate*tp*cp*pp = 2"),
    (["parallel.dp_shard=2"], 4, "does not match the world size 4"),
    (["parallel.pp=8", "parallel.dp_shard=1", *UNTIED], 8, "8 pipeline stages"),
    (["parallel.pp=2", "parallel.dp_shard=1"], 2, "needs untied embeddings"),
    (["parallel.cp=3", "parallel.dp_shard=1"], 3, "sequence length 32 is not divisible by 2*cp = 6"),
    (["parallel.pp=2", "parallel.dp_shard=1", "parallel.pp_microbatches=3", "train.micro_batch_size=1", *UNTIED], 2,
     "4 micro-batches per data-parallel rank are not divisible by parallel.pp_microbatches=3"),
    (["train.micro_batch_size=3"], 2, "not divisible by micro_batch_size=3 x 2 data-parallel ranks"),
    (["parallel.activation_checkpoint=\"some\""], 1, "activation_checkpoint must be one of"),
])
def test_bad_layouts_fail_before_any_work(token_data, tmp_path, overrides, world, message):
    recipe = parse_recipe(load_recipe("tiny", recipe_args(token_data, tmp_path / "run", "", *overrides)))
    recipe.model.init_from = ""
    config = build_model_config(recipe, VOCAB)
    with pytest.raises(par.ParallelConfigError, match=message.replace("*", r"\*")):
        layout = par.resolve_layout(recipe.parallel, world)
        seq_lens = check_batch_shapes(recipe, layout)
        par.validate(recipe.parallel, layout, config, seq_lens=seq_lens)


def test_mismatched_layout_stops_the_cli_before_training(token_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = recipe_args(token_data, run, "", "parallel.tp=2")
    assert main(["pretrain", "tiny", *[a for a in args if not a.startswith("model.init_from")]]) == 2
    assert "world size 1 is not divisible by dp_replicate*tp*cp*pp = 2" in capsys.readouterr().err
    assert not run.exists()


def test_two_ranks_with_a_bad_layout_exit_with_the_message(token_data, tmp_path):
    done = torchrun(2, recipe_args(token_data, tmp_path / "run", initial_weights(tmp_path / "init", tied=True),
                                   "parallel.tp=2", "parallel.dp_shard=1"), timeout=120)
    assert done.returncode != 0
    assert "needs untied embeddings" in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("layout", [["parallel.dp_replicate=2", "parallel.dp_shard=2"],
                                    ["parallel.dp_shard=2", "parallel.tp=2"],
                                    ["parallel.dp_shard=1", "parallel.cp=2", "parallel.tp=2"]],
                         ids=["hsdp-2x2", "fsdp2-x-tp2", "cp2-x-tp2"])
def test_two_dimensional_layouts_on_four_ranks_match_one_process(token_data, tmp_path, layout):
    init = initial_weights(tmp_path / "init", tied=False)
    one_process(recipe_args(token_data, tmp_path / "one", init, *UNTIED))
    run_distributed(4, recipe_args(token_data, tmp_path / "nd", init, *UNTIED, *layout))
    assert_same_losses(losses(tmp_path / "nd"), losses(tmp_path / "one"))


@pytest.mark.parametrize("second", ["parallel.dp_shard=2", "parallel.cp=2"], ids=["pp2-x-fsdp2", "pp2-x-cp2"])
def test_pipeline_with_a_second_dimension_on_four_ranks_matches_one_process(token_data, tmp_path, second):
    init = initial_weights(tmp_path / "init", tied=False)
    one_process(recipe_args(token_data, tmp_path / "one", init, *UNTIED, "train.micro_batch_size=1"))
    run_distributed(4, recipe_args(token_data, tmp_path / "pp", init, *UNTIED, "parallel.pp=2", second,
                                   "train.micro_batch_size=1"))
    assert_same_losses(losses(tmp_path / "pp"), losses(tmp_path / "one"))

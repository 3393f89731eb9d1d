"""The seam post-training plugs into: a custom task and loss trained by the shared loop and
runner, on one process and on 2 gloo ranks under FSDP, resuming bit-exactly; and the
next-token loss normalised over all targets of a step, whatever the micro-batching."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seam_task import CONFIG, RewardModel, train_reward_model
from test_parallel import free_port

from pasture.model import build, save
from pasture.train import checkpoint as ckpt
from pasture.train.loss import IGNORE_INDEX
from pasture.train.metrics import read_metrics
from pasture.train.parallel import ParallelConfig, resolve_layout
from pasture.train.runner import RunnerSpec, build_runner
from pasture.train.task import NextTokenObjective

STEPS = 6
TOLERANCE = 2e-5  # relative: fp32 sums over ranks in another order


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    """One random initialisation of the Transformer shared by every run (FSDP draws its own randoms)."""
    return save(build(CONFIG, seed=1), tmp_path_factory.mktemp("init") / "model")


@pytest.fixture(scope="module")
def one_process(init, tmp_path_factory):
    """The uninterrupted single-process run both tests compare with."""
    run = tmp_path_factory.mktemp("seam") / "one"
    summary = train_reward_model(run, STEPS, str(init), micro_batch_size=2)
    return run, summary


def train_records(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir, "train")


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The reward model's weights (Transformer and head) in the run's last checkpoint."""
    model = RewardModel(build(CONFIG))
    ckpt.load_model(ckpt.step_dir(run_dir, STEPS), model)
    return model.state_dict()


def resume_from_step_3(run_dir: Path, copy: Path, rerun) -> None:
    """A copy of a finished run without the checkpoint of its last step, trained again from
    the one at step 3."""
    shutil.copytree(run_dir, copy)
    shutil.rmtree(ckpt.step_dir(copy, STEPS))
    rerun(copy)


def torchrun(run_dir: Path, init: Path, resume: str = "never") -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           str(Path(__file__).parent / "seam_task.py"), str(run_dir), str(STEPS), str(init), resume]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]


def test_reward_model_trains_through_the_core_and_resumes_bit_exactly(init, one_process, tmp_path):
    run, summary = one_process
    records = train_records(run)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert records[0]["loss"] == pytest.approx(np.log(2), rel=1e-6)  # a zero head scores every pair equal
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    assert records[0]["reward_accuracy"] == 0.0 and records[-1]["reward_accuracy"] == 1.0
    assert all(r["pairs"] == 8 and r["tokens_seen"] == 256 * r["step"] for r in records)
    assert summary["final_loss"] == records[-1]["loss"]
    weights = final_weights(run)
    assert any(k.startswith("score.") for k in weights)  # the head is checkpointed with the model

    resume_from_step_3(run, tmp_path / "resumed",
                       lambda copy: train_reward_model(copy, STEPS, str(init), resume="auto", micro_batch_size=2))
    resumed = train_records(tmp_path / "resumed")
    assert [(r["step"], r["loss"], r["reward_margin"]) for r in resumed] == \
        [(r["step"], r["loss"], r["reward_margin"]) for r in records]
    assert all(torch.equal(weights[k], v) for k, v in final_weights(tmp_path / "resumed").items())


def test_reward_model_on_two_gloo_ranks_matches_one_process_and_resumes(init, one_process, tmp_path):
    """Two data-parallel ranks of four pairs each against one process of four micro-batches of
    two pairs: the same gradient of the mean loss, summed in another order."""
    torchrun(tmp_path / "fsdp", init)
    one, fsdp = train_records(one_process[0]), train_records(tmp_path / "fsdp")
    for key in ("loss", "grad_norm", "reward_margin", "reward_accuracy"):
        np.testing.assert_allclose([r[key] for r in fsdp], [r[key] for r in one], rtol=TOLERANCE, atol=1e-7)
    weights = final_weights(tmp_path / "fsdp")
    for name, value in final_weights(one_process[0]).items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-6)

    resume_from_step_3(tmp_path / "fsdp", tmp_path / "resumed", lambda copy: torchrun(copy, init, resume="auto"))
    assert [(r["step"], r["loss"]) for r in train_records(tmp_path / "resumed")] == \
        [(r["step"], r["loss"]) for r in fsdp]
    assert all(torch.equal(weights[k], v) for k, v in final_weights(tmp_path / "resumed").items())


def test_masked_token_loss_is_normalised_over_every_target_of_the_step(init):
    """SFT's loss: prompt targets masked with IGNORE_INDEX; micro-batches with different
    target counts still give the gradient of the mean over all the step's targets."""
    torch.manual_seed(0)
    inputs = torch.randint(0, CONFIG.vocab_size, (4, 12))
    targets = torch.randint(0, CONFIG.vocab_size, (4, 12))
    for row, prompt_len in enumerate((2, 9, 5, 11)):
        targets[row, :prompt_len] = IGNORE_INDEX
    layout = resolve_layout(ParallelConfig(), 1)
    runner = build_runner(RunnerSpec(CONFIG, ParallelConfig(), layout, torch.device("cpu"), init_from=str(init),
                                     micro_batch_size=1))
    rows = runner.split(4)
    assert (rows.rows, rows.count) == (1, 4)
    batches = [{"inputs": inputs[i:i + 1], "targets": targets[i:i + 1]} for i in range(4)]
    step = runner.forward_backward(batches, NextTokenObjective(document_mask=False))
    got = {name: p.grad.clone() for name, p in runner.module.named_parameters()}

    reference = build(CONFIG)
    reference.load_state_dict(runner.module.state_dict())
    logits = reference(inputs)
    mean = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    mean.backward()
    assert step.n_targets == int((targets != IGNORE_INDEX).sum()) == 48 - 27
    assert step.loss == pytest.approx(mean.item(), rel=1e-5)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6)

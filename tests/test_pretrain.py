"""Pre-training: loss falls, exact resume after SIGKILL, corrupt checkpoints, NaN steps, sampling."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from ticking_clock import TickingClock
from token_data import write_progressions

from pasture import runs
from pasture.cli import main
from pasture.errors import PastureError
from pasture.train import checkpoint as ckpt
from pasture.train import loop, runner
from pasture.train import pretrain as pt
from pasture.train.metrics import read_metrics
from pasture.train.recipe import load_recipe, parse_recipe
from pasture.train.validation import evaluate

VOCAB = 300
SMALL_MODEL = ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.multiple_of=32"]


@pytest.fixture(scope="module")
def token_data(tmp_path_factory):
    return write_progressions(tmp_path_factory.mktemp("tokens"), VOCAB, 300, 30, 120)


def recipe_args(data, run_dir, *extra):
    return ["tiny", f"data.train=[\"{data}\"]", f"log.dir=\"{run_dir}\"", "log.progress=false",
            "log.tensorboard=false", "train.seq_len=64", "train.batch_size=4", "train.batch_ramp=[]",
            "train.threads=1", "train.anneal_steps=0", "optim.lr=0.01", "optim.warmup_steps=3", "eval.every=0", "eval.batches=4",
            "eval.batch_size=4", "checkpoint.anneal_every=0", *SMALL_MODEL, *extra]


def run_recipe(args):
    raw = load_recipe(args[0], args[1:])
    return pt.pretrain(parse_recipe(raw), raw, log=lambda *_: None)


def train_losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir, "train")]


def test_loss_falls_and_validation_reports_bits_per_byte(token_data, tmp_path):
    summary = run_recipe(recipe_args(token_data, tmp_path / "run", "train.steps=40", "train.anneal_steps=5",
                                     "log.every=1", "checkpoint.every=20"))
    losses = [loss for _, loss in train_losses(tmp_path / "run")]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])
    assert summary["val_bpb"] > 0 and summary["val_loss"] < losses[0]
    assert summary["tokens_seen"] == 40 * 4 * 64
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [20, 40]
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run", "train")]
    assert lrs[-1] < lrs[-5] < lrs[-6]  # annealing takes the rate towards 0
    assert main(["report", str(tmp_path / "run")]) == 0  # a report card for a plain pre-training run
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| steps | 40 |" in report and "val_bpb" in report and (tmp_path / "run" / "plots" / "loss.png").exists()
    assert main(["report", str(tmp_path)]) == 2


def test_compiled_blocks_train_like_eager(token_data, tmp_path):
    """train.compile=true compiles each block and the loss's chunk work with inductor (CPU code here): same losses."""
    common = ("train.steps=4", "log.every=1", "checkpoint.every=100", "train.threads=2")
    run_recipe(recipe_args(token_data, tmp_path / "eager", *common))
    run_recipe(recipe_args(token_data, tmp_path / "compiled", *common, "train.compile=true"))
    eager, compiled = train_losses(tmp_path / "eager"), train_losses(tmp_path / "compiled")
    assert [s for s, _ in compiled] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in compiled], [v for _, v in eager], rtol=1e-5)


def test_resume_after_sigkill_equals_uninterrupted_run(token_data, tmp_path):
    steps = ["train.steps=14", "checkpoint.every=3", "log.every=1", "train.batch_ramp=[[0, 256], [1024, 512]]"]
    run_recipe(recipe_args(token_data, tmp_path / "straight", *steps))
    reference = train_losses(tmp_path / "straight")

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pasture.cli", "pretrain", *recipe_args(token_data, killed, *steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(train_losses(killed)) >= 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(train_losses(killed)) < 14
    assert main(["pretrain", *recipe_args(token_data, killed, *steps, "resume=\"auto\"")]) == 0
    assert train_losses(killed) == reference  # bit for bit, every step


def test_sigterm_checkpoints_the_current_step_and_resume_continues(token_data, tmp_path):
    steps = ["train.steps=12", "checkpoint.every=100", "log.every=1"]
    run_recipe(recipe_args(token_data, tmp_path / "straight", *steps))
    run = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "pasture.cli", "pretrain", *recipe_args(token_data, run, *steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(train_losses(run)) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "stopped by signal" in out
    (step, folder), = ckpt.list_checkpoints(run)  # checkpoint.every=100: only the signal wrote one
    assert 4 <= step < 12 and len(train_losses(run)) == step
    ckpt.validate(folder)
    assert main(["pretrain", *recipe_args(token_data, run, *steps, "resume=\"auto\"")]) == 0
    assert train_losses(run) == train_losses(tmp_path / "straight")


def test_time_budget_plans_the_steps_and_a_resumed_run_keeps_them(token_data, tmp_path, monkeypatch):
    """train.time_budget_s: at a tenth of train.steps the loop fixes how many steps fit.

    With a clock that ticks 10 ms a reading, each iteration spends 10 ms in its step and
    10 ms after it; at step 40 the loop has run 0.79 s (0.40 s in steps), so a step costs
    0.01 + 0.39 / 40 s, and 2 s less the 2% reserve leaves int(1.17 / 0.01975) = 59 steps: 99 in
    all, with round(40 x 99 / 400) = 10 of them annealing.
    """
    args = recipe_args(token_data, tmp_path / "run", "train.steps=400", "train.anneal_steps=40",
                       "train.time_budget_s=2", 'optim.schedule="constant"', "checkpoint.every=50", "checkpoint.keep_last=5", "log.every=1")
    monkeypatch.setattr(loop, "time", TickingClock(0.01))
    summary = run_recipe(args)
    assert summary["steps"] == summary["planned_steps"] == 99
    assert summary["train_seconds"] == pytest.approx(99 * 0.02 + 2 * 0.01)  # + a reading in each checkpoint (50, 99)
    (event,) = [r for r in read_metrics(tmp_path / "run", "event") if r["event"] == "planned_steps"]
    assert (event["step"], event["steps"], event["anneal_steps"]) == (40, 99, 10)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run", "train")]
    assert lrs[88] == pytest.approx(lrs[40]) and lrs[89] < lrs[88]  # the 10 annealing steps: 90-99
    reference = train_losses(tmp_path / "run")

    shutil.rmtree(ckpt.step_dir(tmp_path / "run", 99))  # back to step 50, past the plan; a slower clock
    monkeypatch.setattr(loop, "time", TickingClock(0.5))  # would plan far fewer steps
    assert run_recipe([*args, 'resume="auto"'])["steps"] == 99
    assert train_losses(tmp_path / "run") == reference


def test_step_plan_without_a_budget_is_the_config():
    plan = loop.StepPlan.from_config(loop.LoopConfig(run_dir=".", steps=100, optim=None, anneal_steps=10))
    counters = loop._Counters(step=50, seconds=5.0, step_seconds=5.0)
    assert not plan.observe(counters, 0.1) and (plan.steps, plan.anneal_steps) == (100, 10)
    assert plan.state_dict() == {}


def test_corrupt_newest_checkpoint_is_skipped(token_data, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train.steps=6", "checkpoint.every=2", "checkpoint.keep_last=5"]
    run_recipe(recipe_args(token_data, run, *base))
    reference = train_losses(run)
    newest = ckpt.step_dir(run, 6)
    shard = next(p for p in newest.iterdir() if p.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes()[:100])
    assert ckpt.latest_valid(run, log=lambda *_: None) == ckpt.step_dir(run, 4)
    run_recipe(recipe_args(token_data, run, *base, "train.steps=6", "resume=\"auto\""))
    assert train_losses(run) == reference


def test_refuses_to_overwrite_a_run_and_rejects_typos(token_data, tmp_path, capsys):
    run = tmp_path / "run"
    run_recipe(recipe_args(token_data, run, "train.steps=4", "checkpoint.every=2"))
    assert main(["pretrain", *recipe_args(token_data, run, "train.steps=4")]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(["pretrain", *recipe_args(token_data, run, "optim.lrr=1")]) == 2
    assert "unknown key optim.lrr" in capsys.readouterr().err
    assert main(["pretrain", "no-such-recipe"]) == 2
    assert "shipped" in capsys.readouterr().err
    assert main(["pretrain", *recipe_args(tmp_path / "missing", tmp_path / "r2", "train.steps=4")]) == 2
    assert "no token dataset index" in capsys.readouterr().err


def test_checkpoint_final_false_writes_no_checkpoint(token_data, tmp_path):
    run = tmp_path / "run"
    run_recipe(recipe_args(token_data, run, "train.steps=3", "checkpoint.every=0", "checkpoint.final=false",
                                     "log.every=1"))
    assert ckpt.list_checkpoints(run) == [] and len(train_losses(run)) == 3


def test_nan_steps_are_skipped_counted_and_stop_the_run(token_data, tmp_path, monkeypatch):
    real = runner.cross_entropy_sum
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] in (3, 7, 8) else loss

    monkeypatch.setattr(runner, "cross_entropy_sum", flaky)
    summary = run_recipe(recipe_args(token_data, tmp_path / "run", "train.steps=10", "checkpoint.every=5"))
    assert summary["skipped_steps"] == 3
    events = read_metrics(tmp_path / "run", "event")
    assert [e["step"] for e in events] == [3, 7, 8]
    assert all(np.isfinite(loss) for _, loss in train_losses(tmp_path / "run") if _ not in (3, 7, 8))

    calls["n"] = 0
    monkeypatch.setattr(runner, "cross_entropy_sum", lambda *args: real(*args) * (
        float("nan") if (calls.__setitem__("n", calls["n"] + 1) or calls["n"]) > 4 else 1.0))
    with pytest.raises(loop.TrainingDiverged, match="consecutive"):
        run_recipe(recipe_args(token_data, tmp_path / "diverge", "train.steps=20", "checkpoint.every=2",
                               "train.max_bad_steps=3"))
    ckpt.validate(ckpt.latest_valid(tmp_path / "diverge"))
    assert ckpt.latest_valid(tmp_path / "diverge").name == "step_00000006"  # skipped steps leave weights as they were


def test_gradient_spike_is_skipped_with_its_reason(token_data, tmp_path, monkeypatch):
    real = runner.cross_entropy_sum
    calls = {"n": 0}

    def spiky(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * 1e4 if calls["n"] == 26 else loss  # a finite loss with an exploding gradient

    monkeypatch.setattr(runner, "cross_entropy_sum", spiky)
    summary = run_recipe(recipe_args(token_data, tmp_path / "run", "train.steps=28", "checkpoint.every=28",
                                     "eval.batches=1"))
    events = read_metrics(tmp_path / "run", "event")
    assert [(e["step"], e["reason"]) for e in events] == [(26, "grad_norm_spike")]
    assert summary["skipped_steps"] == 1 and np.isfinite(summary["final_loss"])


def test_step_guard_reasons_and_state():
    from pasture.train.step_guard import StepGuard

    guard = StepGuard(max_grad_norm=100.0, spike_factor=5.0, window=4, min_history=3)
    assert guard.reason_to_skip(float("nan"), 1.0) == "non_finite_loss"
    assert guard.reason_to_skip(1.0, float("inf")) == "non_finite_grad_norm"
    assert guard.reason_to_skip(1.0, 101.0) == "grad_norm_above_max"
    assert guard.reason_to_skip(1.0, 50.0) is None  # no history yet: no spike test
    for norm in (1.0, 2.0, 3.0, 4.0, 5.0):
        guard.applied(norm)
    assert guard.history == [2.0, 3.0, 4.0, 5.0]
    assert guard.reason_to_skip(1.0, 17.4) is None and guard.reason_to_skip(1.0, 17.6) == "grad_norm_spike"
    restored = StepGuard(spike_factor=5.0, min_history=3)
    restored.load_state_dict(guard.state_dict())
    assert restored.reason_to_skip(1.0, 17.6) == "grad_norm_spike"


def test_annealing_averages_checkpoints(token_data, tmp_path):
    run = tmp_path / "run"
    summary = run_recipe(recipe_args(token_data, run, "train.steps=12", "train.anneal_steps=4",
                                     "checkpoint.anneal_every=2", "checkpoint.every=12", "eval.batches=2"))
    kept = sorted((run / "anneal").iterdir())
    assert [p.name for p in kept] == ["step_00000010", "step_00000012"]
    states = [ckpt.read_model_state(p)[0] for p in kept]
    averaged, _ = ckpt.read_model_state(summary["averaged"])
    key = "layers.0.attention.wq.weight"
    torch.testing.assert_close(averaged[key], (states[0][key] + states[1][key]) / 2)
    # the final validation scores the averaged model
    from pasture.train.loader import ValidationLoader
    from pasture.train.shards import TokenDataset

    model, _ = runs.load(summary["averaged"])
    val = evaluate(model, ValidationLoader(TokenDataset(token_data, "val"), 4, 64, 2), torch.device("cpu"), None)
    assert val["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-6)


def test_checkpoint_loads_as_model_and_generates_same_with_and_without_cache(token_data, tmp_path):
    from pasture import model as pm
    from pasture.serve import Engine, SamplingParams

    run = tmp_path / "run"
    run_recipe(recipe_args(token_data, run, "train.steps=4", "checkpoint.every=4"))
    model, config = runs.load(run)
    assert config.vocab_size == VOCAB and config.dim == 64
    final, _ = pm.load(run)  # a finished run's final model (here its last checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), model.state_dict().values()))
    model.eval()
    prompt = [VOCAB - 2, 5, 8, 11]
    without_cache = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            without_cache.append(int(model(torch.tensor([without_cache]))[0, -1].argmax()))
    greedy = SamplingParams(max_tokens=12, temperature=0)
    with Engine(model) as engine:
        assert engine.generate(prompt, greedy)[0].token_ids == without_cache[len(prompt):]
        first = without_cache[len(prompt)]
        assert engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[first]))[0].token_ids == []
    assert main(["convert", str(run), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == VOCAB


def test_schedules():
    from pasture.train.schedule import OptimConfig, learning_rate, schedule_value

    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [learning_rate(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3) and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    wsd = OptimConfig(lr=1.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    w = [learning_rate(s, 100, wsd) for s in range(100)]
    assert w[50] == 1.0 and w[79] == 1.0 and w[99] == pytest.approx(0.0) and w[89] == pytest.approx(0.5)
    annealed = [learning_rate(s, 100, cfg, anneal_steps=10) for s in range(100)]
    # the main schedule is a whole 90-step cosine, then the rate falls linearly towards 0
    assert annealed[:90] == [learning_rate(s, 90, cfg) for s in range(90)]
    assert annealed[:10] == lrs[:10] and annealed[50] < lrs[50]
    assert annealed[90:] == pytest.approx([annealed[89] * (10 - i) / 11 for i in range(10)], rel=1e-12)
    ramp = [[0, 4_000_000], [252_000_000, 8_000_000], [2_870_000_000_000, 16_000_000]]
    assert [schedule_value(ramp, t, "r") for t in (0, 251_999_999, 252_000_000, 3e12)] == [4e6, 4e6, 8e6, 16e6]
    with pytest.raises(PastureError):
        schedule_value([[5, 1]], 0, "train.batch_ramp")


def test_missing_tensorboard_warns_once_with_the_install_command(tmp_path):
    script = (
        "import sys\n"
        "sys.modules['torch.utils.tensorboard'] = None  # as if tensorboard were not installed\n"
        "from pasture.train.metrics import MetricsLog\n"
        "for name in ('a', 'b', 'c'):\n"
        f"    MetricsLog({str(tmp_path)!r} + '/' + name, tensorboard=True)\n"
        f"MetricsLog({str(tmp_path)!r} + '/d', tensorboard=False)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("pip install 'pasture[tensorboard]'") == 1
    assert "log.tensorboard=false" in result.stderr

"""A run's final model, stopping multi-rank runs together, and checkpoints that are final once written.

The final model is what Llama 3 ships: the average of the annealing checkpoints. A run
folder resolves to it everywhere; a single checkpoint can still be chosen.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pasture import model as pm
from pasture import runs
from pasture.train import checkpoint as ckpt
from pasture.train.metrics import read_metrics
from test_parallel import free_port, initial_weights, one_process, recipe_args, token_data  # noqa: F401


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_folder_loads_the_averaged_final_model(token_data, tmp_path):
    init = initial_weights(tmp_path / "init", tied=True)
    run = tmp_path / "run"
    summary = one_process(recipe_args(token_data, run, init, "train.steps=8", "train.anneal_steps=4",
                                      "checkpoint.anneal_every=2", "checkpoint.every=8"))
    assert summary["final_model"] == str(run / "model")
    source = json.loads((run / "model" / "source.json").read_text())
    assert source["weights"] == "averaged"
    assert source["description"] == "average of 2 annealing checkpoints (steps 5-8)"
    averaged, _ = ckpt.read_model_state(run / "averaged")
    last_step, _ = ckpt.read_model_state(run / "checkpoints" / "step_00000008")
    assert not _same_weights(averaged, last_step)  # the average is not the last step's weights
    final, _ = pm.read_weights(run)  # pasture.model.load(RUN): the final model
    assert _same_weights(final, averaged)
    assert _same_weights(runs.read_weights(run)[0], averaged)
    chosen, _ = runs.read_weights(run / "checkpoints" / "step_00000008")  # a specific checkpoint, on request
    assert _same_weights(chosen, last_step)
    assert runs.describe(run) == "final model: average of 2 annealing checkpoints (steps 5-8)"
    model, config = pm.load(run)
    logits = model(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, config.vocab_size)


def test_run_without_annealing_ends_with_its_last_checkpoint(token_data, tmp_path):
    init = initial_weights(tmp_path / "init", tied=True)
    run = tmp_path / "run"
    one_process(recipe_args(token_data, run, init, "train.steps=3"))
    assert json.loads((run / "model" / "source.json").read_text())["description"] == "checkpoint of step 3"
    assert _same_weights(pm.read_weights(run)[0], ckpt.read_model_state(run / "checkpoints" / "step_00000003")[0])


def test_unfinished_run_is_not_a_model(token_data, tmp_path):
    init = initial_weights(tmp_path / "init", tied=True)
    run = tmp_path / "run"
    one_process(recipe_args(token_data, run, init, "train.steps=3"))
    import shutil

    shutil.rmtree(run / "model")  # as if training had not finished
    with pytest.raises(pm.CheckpointError, match="no final model yet"):
        pm.load(run)
    assert runs.describe(run).startswith("checkpoint ")  # runs.load falls back to the newest checkpoint


def test_average_refuses_a_damaged_snapshot(token_data, tmp_path):
    init = initial_weights(tmp_path / "init", tied=True)
    run = tmp_path / "run"
    one_process(recipe_args(token_data, run, init, "train.steps=8", "train.anneal_steps=4",
                            "checkpoint.anneal_every=2", "checkpoint.every=8"))
    config = pm.ModelConfig.from_dict(ckpt.read_config(run / "averaged")["model"])
    assert len(ckpt.anneal_snapshots(run, config)) == 2
    (run / "anneal" / "step_00000006" / "COMPLETE").unlink()
    with pytest.raises(ckpt.CheckpointCorrupt):
        ckpt.anneal_snapshots(run, config)


def test_weights_folder_is_never_half_written(tmp_path, monkeypatch):
    import torch.distributed.checkpoint as dcp

    config = pm.ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=64, multiple_of=16,
                            ffn_dim_multiplier=None, rope_scaling=None, max_seq_len=64)
    model = pm.build(config, seed=0)
    ckpt.save_weights(tmp_path / "w", model, config)
    before = ckpt.read_model_state(tmp_path / "w")[0]

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dcp, "save", crash)
    with pytest.raises(OSError):
        ckpt.save_weights(tmp_path / "w", pm.build(config, seed=1), config)
    ckpt.validate(tmp_path / "w")  # the previous folder is untouched and whole
    assert _same_weights(ckpt.read_model_state(tmp_path / "w")[0], before)


def _torchrun(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "pasture.cli", "pretrain", "tiny", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _workers(parent: int) -> list[int]:
    """Child processes of the torchrun agent (its workers), from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return sorted(children)


def _kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL the torchrun agent and its workers: they run in their own process groups, and
    an orphaned worker would train on (and load the machine) for the rest of the suite."""
    workers = _workers(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _last_step(run: Path) -> int:
    try:
        return max((r["step"] for r in read_metrics(run, "train")), default=0)
    except (OSError, json.JSONDecodeError):
        return 0


def test_sigterm_to_one_rank_stops_both_at_the_same_step(token_data, tmp_path):
    init = initial_weights(tmp_path / "init", tied=True)
    run = tmp_path / "run"
    proc = _torchrun(recipe_args(token_data, run, init, "train.steps=5000", "checkpoint.every=100000"))
    try:
        _wait_for(lambda: _last_step(run) >= 3, 180, "training to start")
        workers = _workers(proc.pid)
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGTERM)  # only one rank hears it
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            _kill_all(proc)
    assert proc.returncode == 0, output[-3000:]
    (step, folder), = ckpt.list_checkpoints(run)
    ckpt.validate(folder)
    assert sorted(p.name for p in folder.glob("train_state_rank*.pt")) == ["train_state_rank00000.pt",
                                                                          "train_state_rank00001.pt"]
    assert step < 5000 and "stopped by signal at step" in output


def test_async_checkpoint_is_final_as_soon_as_it_is_written(token_data, tmp_path):
    init = initial_weights(tmp_path / "init", tied=True)
    run = tmp_path / "run"
    proc = _torchrun(recipe_args(token_data, run, init, "train.steps=5000", "checkpoint.every=40",
                                 "parallel.async_checkpoint=true"))
    try:
        first = run / "checkpoints" / "step_00000040"
        _wait_for(lambda: (first / "COMPLETE").is_file() or proc.poll() is not None, 240, "the first checkpoint")
        step_seen = _last_step(run)
        _kill_all(proc)  # a crash right after the write finished
    finally:
        if proc.poll() is None:
            _kill_all(proc)
    assert step_seen < 80, "the checkpoint of step 40 only appeared at the next save"
    assert ckpt.latest_valid(run) == first


def test_speedrun_folder_opens_its_pretraining_run(token_data, tmp_path):
    init = initial_weights(tmp_path / "init", tied=True)
    speedrun = tmp_path / "speedrun"
    (speedrun / "stages").mkdir(parents=True)
    one_process(recipe_args(token_data, speedrun / "train", init, "train.steps=3"))
    assert runs.run_folder(speedrun) == speedrun / "train"
    assert _same_weights(runs.read_weights(speedrun)[0], pm.read_weights(speedrun / "train")[0])
    assert runs.describe(speedrun) == "final model: checkpoint of step 3"

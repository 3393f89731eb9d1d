"""SFT, reward and DPO runs through the training core on a tiny model: the run folder,
metrics rows, ln 2 at step 1, accumulation = one batch, resume, and that training trains."""

import json
import math

import pytest
import torch

from post_fixtures import one_thread, llama3_encoder, qa_conversations, qa_preferences, tiny_model, write_jsonl
from pasture.model import load, save
from pasture.post.dpo import dpo
from pasture.post.models import save_encoder
from pasture.post.recipe import parse_recipe
from pasture.post.reward import reward
from pasture.post.reward_model import load_reward_model
from pasture.post.sft import sft
from pasture.train.metrics import read_metrics

LN2_F32 = torch.tensor(math.log(2)).item()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    save(tiny_model(seed=3), folder)
    save_encoder(llama3_encoder(), folder)
    return str(folder)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return {"sft": str(write_jsonl(folder / "sft.jsonl", qa_conversations(12) + [{"messages": [{"role": "user", "content": "x"}]}])),
            "prefs": str(write_jsonl(folder / "prefs.jsonl", qa_preferences(24)))}


def recipe(**overrides):
    raw = {"train": {"steps": 3, "batch_size": 4, "seq_len": 96, "device": "cpu", "seed": 0},
           "optim": {"lr": 3e-3}, "checkpoint": {"every": 0, "keep_last": 1},
           "log": {"progress": False}, "data": {"heldout_fraction": 0.25}}
    for key, value in overrides.items():
        section, name = key.split("__")
        raw.setdefault(section, {})[name] = value
    return parse_recipe(raw), raw


def quiet(*_):
    pass


def train_rows(run):
    return read_metrics(run, "train")


def changed_tensors(before: dict, after: dict) -> list[str]:
    return [n for n in before if not torch.equal(before[n], after[n])]


def test_sft_run_folder_metrics_and_training_trains(base, data, tmp_path):
    r, raw = recipe()
    summary = sft(base, [data["sft"]], tmp_path / "sft", r, raw, log=quiet)
    rows = train_rows(tmp_path / "sft")
    assert [row["step"] for row in rows] == [1, 2, 3] and all(math.isfinite(row["loss"]) for row in rows)
    assert summary["data"]["skipped"] == {"no_assistant_turn": 1}
    assert json.loads((tmp_path / "sft" / "recipe.json").read_text())["train"]["steps"] == 3
    trained, _ = load(tmp_path / "sft")
    start, _ = load(base)
    before, after = start.state_dict(), trained.state_dict()
    assert changed_tensors(before, after) == list(before)  # every tensor moved: nothing frozen by mistake
    assert (tmp_path / "sft" / "tokenizer.model").is_file()  # the next stage finds the chat format here


def test_sft_accumulation_equals_one_batch(base, data, tmp_path):
    r1, raw1 = recipe(train__steps=2)
    r2, raw2 = recipe(train__steps=2, train__micro_batch_size=1)
    sft(base, [data["sft"]], tmp_path / "one", r1, raw1, log=quiet)
    sft(base, [data["sft"]], tmp_path / "acc", r2, raw2, log=quiet)
    for a, b in zip(train_rows(tmp_path / "one"), train_rows(tmp_path / "acc")):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_sft_resume_matches_an_uninterrupted_run(base, data, tmp_path):
    r, raw = recipe(train__steps=4)
    sft(base, [data["sft"]], tmp_path / "full", r, raw, log=quiet)
    r2, raw2 = recipe(train__steps=2, checkpoint__every=2)
    sft(base, [data["sft"]], tmp_path / "cut", r2, raw2, log=quiet)
    r3, raw3 = recipe(train__steps=4)
    r3.resume = "auto"
    sft(base, [data["sft"]], tmp_path / "cut", r3, raw3, log=quiet)
    assert [x["loss"] for x in train_rows(tmp_path / "cut")] == [x["loss"] for x in train_rows(tmp_path / "full")]


def test_reward_model_starts_at_ln2_and_reports_heldout_accuracy(base, data, tmp_path):
    r, raw = recipe(train__steps=4, optim__lr=1e-2)
    summary = reward(base, [data["prefs"]], tmp_path / "rm", r, raw, log=quiet)
    rows = train_rows(tmp_path / "rm")
    assert rows[0]["step"] == 1 and rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # zero head: equal scores
    assert all("accuracy" in row and 0 <= row["accuracy"] <= 1 for row in rows)
    assert summary["data"]["heldout_pairs"] == 6 and summary["heldout_before"]["accuracy"] == 0.0  # ties are wrong
    assert 0 <= summary["heldout_accuracy"] <= 1
    rm = load_reward_model(tmp_path / "rm")
    assert rm.head.weight.abs().sum() > 0
    start, _ = load(base)
    unused = ["output.weight"]  # the language-model head plays no part in a score
    assert changed_tensors(start.state_dict(), rm.transformer.state_dict()) == [n for n in start.state_dict() if n not in unused]


DPO_METRICS = ("loss", "dpo_loss", "nll_loss", "chosen_reward", "rejected_reward", "reward_accuracy", "reward_margin")


def test_dpo_first_row_is_ln2_before_any_update(base, data, tmp_path):
    r, raw = recipe(optim__lr=1e-3)
    summary = dpo(base, [data["prefs"]], tmp_path / "dpo", r, raw, log=quiet)
    rows = train_rows(tmp_path / "dpo")
    assert rows[0]["step"] == 1 and all(name in rows[0] for name in DPO_METRICS)
    assert rows[0]["dpo_loss"] == LN2_F32  # policy = reference: exactly ln 2
    assert rows[0]["chosen_reward"] == 0 and rows[0]["reward_margin"] == 0
    assert rows[0]["loss"] == pytest.approx(rows[0]["dpo_loss"] + 0.2 * rows[0]["nll_loss"], abs=1e-6)
    assert rows[-1]["reward_margin"] > 0  # it learns to prefer the chosen answers
    trained, _ = load(tmp_path / "dpo")
    start, _ = load(base)
    assert changed_tensors(start.state_dict(), trained.state_dict()) == list(start.state_dict())
    assert "preference_accuracy" in summary["heldout_before"]


def test_dpo_frozen_reference_and_accumulation_agree(base, data, tmp_path):
    r, raw = recipe(train__steps=2)
    dpo(base, [data["prefs"]], tmp_path / "pre", r, raw, log=quiet)
    r2, raw2 = recipe(train__steps=2, dpo__reference="frozen", train__micro_batch_size=1)
    dpo(base, [data["prefs"]], tmp_path / "frozen", r2, raw2, log=quiet)
    for a, b in zip(train_rows(tmp_path / "pre"), train_rows(tmp_path / "frozen")):
        for name in DPO_METRICS:
            assert a[name] == pytest.approx(b[name], abs=1e-5), name


def test_reward_model_under_torchrun_fsdp_matches_one_process(base, data, tmp_path):
    """Two gloo ranks (FSDP2 through the core, the head's wrapper included) give one process's
    losses, rank 0 alone logging. (DPO and SFT match the same way; one launch keeps this short.)"""
    import os
    import subprocess
    import sys

    from test_parallel import free_port

    common = ["train.steps=2", "train.batch_size=4", 'train.device="cpu"', "log.progress=false",
              "optim.warmup_steps=0", "checkpoint.every=0", "optim.lr=3e-3", "data.heldout_fraction=0.25"]
    for method in ("reward",):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
               "-m", "pasture.cli", method, base, "--data", data["prefs"], "--out", str(tmp_path / f"{method}-2"),
               *common]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("done: 2 steps") == 1
        r, raw = recipe(train__steps=2, train__batch_size=4)
        {"dpo": dpo, "reward": reward}[method](base, [data["prefs"]], tmp_path / f"{method}-1", r, raw, log=quiet)
        two, one = train_rows(tmp_path / f"{method}-2"), train_rows(tmp_path / f"{method}-1")
        assert [x["loss"] for x in two] == pytest.approx([x["loss"] for x in one], abs=1e-5)


def test_tree_rows_give_each_sides_log_probs_of_a_plain_forward():
    from pasture.post.data import Preference, Skipped
    from pasture.post.dpo import pair_logprobs
    from pasture.post.encode import encode_pairs
    from pasture.post.trainer import PlainModelView

    model, encoder = tiny_model(seed=5).eval(), llama3_encoder()
    records = [Preference(r["messages"], [r["chosen"], r["rejected"]]) for r in qa_preferences(5)]
    pairs = encode_pairs(encoder, records, 512, Skipped())
    got = pair_logprobs(PlainModelView(model), pairs, torch.device("cpu"), batch_size=2)
    for pair, (chosen, rejected) in zip(pairs, got.tolist()):
        for side, value in ((pair.chosen, chosen), (pair.rejected, rejected)):
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([side.tokens]))[0, :-1].double(), -1)
            scored = [j for j in range(1, len(side.tokens)) if side.loss_mask[j]]
            assert value == pytest.approx(sum(float(logprobs[j - 1, side.tokens[j]]) for j in scored), abs=1e-4)

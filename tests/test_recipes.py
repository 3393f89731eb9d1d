"""The shipped pre-training recipes against Llama 3's chain (§3.4): pre-training, then long
context in six stages from 8K to 128K, then annealing over the final 40M tokens."""

import math
import tomllib
from pathlib import Path

import pytest

from pasture.train.schedule import schedule_value

RECIPES = Path(__file__).resolve().parents[1] / "src" / "pasture" / "recipes"


def train_section(name: str) -> dict:
    return tomllib.loads((RECIPES / f"{name}.toml").read_text())["train"]


def walk(train: dict) -> dict:
    """Tokens trained, tokens annealed and the sequence length while annealing, stepping the
    batch ramp and the length stages exactly as pre-training does (whole runs of equal steps)."""
    seq_stages, ramp = train.get("seq_len_schedule", []), train.get("batch_ramp", [])
    steps, anneal_start = train["steps"], train["steps"] - train.get("anneal_steps", 0)
    step = tokens = annealed = 0
    anneal_seq_lens = set()
    while step < steps:
        seq_len = schedule_value(seq_stages, tokens, "seq") if seq_stages else train["seq_len"]
        batch = schedule_value(ramp, tokens, "ramp") // seq_len if ramp else train["batch_size"]
        per_step = batch * seq_len
        end = anneal_start if step < anneal_start else steps
        thresholds = [t for t, _ in seq_stages + ramp if t > tokens]
        if thresholds:  # until the next stage begins
            end = min(end, step + math.ceil((min(thresholds) - tokens) / per_step))
        if step >= anneal_start:
            annealed += (end - step) * per_step
            anneal_seq_lens.add(seq_len)
        tokens += (end - step) * per_step
        step = end
    return {"tokens": tokens, "annealed": annealed, "anneal_seq_lens": anneal_seq_lens}


@pytest.mark.parametrize("name", ["8b", "70b", "405b-long"])
def test_paper_sizes_anneal_over_the_final_40m_tokens(name):
    run = walk(train_section(name))
    assert 30e6 <= run["annealed"] <= 50e6, run["annealed"]  # 2 steps of 16M tokens: 33.6M


def test_405b_chain_is_pretrain_then_six_long_context_stages_then_annealing():
    pretrain, long = train_section("405b"), train_section("405b-long")
    assert pretrain.get("anneal_steps", 0) == 0  # annealing comes after long context
    assert tomllib.loads((RECIPES / "405b-long.toml").read_text())["model"]["init_from"] == "runs/405b"
    lengths = [seq_len for _, seq_len in long["seq_len_schedule"]]
    assert len(lengths) == 6 and lengths == sorted(lengths)
    assert lengths[0] > pretrain["seq_len"] == 8192 and lengths[-1] == long["seq_len"] == 131072
    run = walk(long)
    assert run["anneal_seq_lens"] == {131072}  # annealing keeps the 128K context
    assert 750e9 <= run["tokens"] <= 850e9  # "about 800B tokens"


@pytest.mark.parametrize("name", ["8b", "70b", "405b"])
def test_paper_sizes_ramp_the_batch_to_16m_tokens(name):
    train = train_section(name)
    text = (RECIPES / f"{name}.toml").read_text()
    ramp = [tokens for _, tokens in train["batch_ramp"]]
    assert ramp == [4 * 2**20, 8 * 2**20, 16 * 2**20]
    assert "4M -> 8M -> 16M" in text or "4M tokens of 4K sequences, 8M" in text  # comments say the ramp

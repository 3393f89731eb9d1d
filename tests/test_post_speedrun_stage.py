"""The speedrun's post-training stage on a tiny model: every stage runs and reports its numbers."""

import json

import pytest

from post_fixtures import llama3_encoder, one_thread, tiny_model
from pasture.model import load, save
from pasture.post.models import save_encoder
from pasture.post.speedrun_stage import PostStageConfig, post_train


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def test_post_stage_reports_each_step(tmp_path, capfd):
    save(tiny_model(seed=1), tmp_path / "base")
    save_encoder(llama3_encoder(), tmp_path / "base")
    cfg = PostStageConfig(pairs=30, heldout_fraction=0.2, reward_steps=2, sft_steps=3, dpo_steps=2, batch_size=4,
                          sample_prompts=4, k=2, max_tokens=8, samples_shown=2)
    result = post_train(tmp_path, str(tmp_path / "base"), cfg, log=lambda *_: None)
    assert result["heldout_questions"] == 6
    losses = result["answer_loss"]
    assert losses["sft"] < losses["base"]  # SFT lowers the held-out answer loss
    for key in ("reward_model_heldout_accuracy", "dpo_heldout_reward_accuracy", "dpo_final_train_reward_accuracy"):
        assert 0 <= result[key] <= 1
    assert result["rejection_sampling"]["samples"] == 8 and len(result["samples"]) == 2
    assert json.loads((tmp_path / "post" / "post.json").read_text())["answer_loss"] == losses
    load(result["chat_model"])  # the chat model loads like any model
    assert "it/s" not in capfd.readouterr().err  # progress off: no bars

"""Rejection sampling through the serving engine, scored by a reward model."""

import json

import pytest
import torch

from post_fixtures import llama3_encoder, one_thread, tiny_model, write_jsonl
from pasture.model import save
from pasture.post.models import save_encoder
from pasture.post.rejection import RejectionConfig, rejection_sample
from pasture.post.reward_model import load_reward_model, save_head, score_responses


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def test_best_of_k_is_kept_with_its_scores(tmp_path):
    policy = tiny_model(seed=1)
    torch.nn.init.zeros_(policy.output.weight)  # uniform next token: ~3/512 chance to stop at each step
    save(policy, tmp_path / "policy")
    save_encoder(llama3_encoder(), tmp_path / "policy")
    save(tiny_model(seed=2), tmp_path / "rm")
    save_head(torch.randn(1, 32), tmp_path / "rm")
    save_encoder(llama3_encoder(), tmp_path / "rm")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"messages": [{"role": "user", "content": f"question {i}"}]} for i in range(3)
    ] + [{"messages": [{"role": "assistant", "content": "no prompt"}]}])
    config = RejectionConfig(k=4, temperature=1.0, max_tokens=400, system_prompts=["Be brief."], device="cpu")
    stats = rejection_sample(str(tmp_path / "policy"), str(tmp_path / "rm"), [str(prompts)], tmp_path / "best.jsonl",
                             config, log=lambda *_: None)
    sft = [json.loads(line) for line in (tmp_path / "best.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (tmp_path / "best.pairs.jsonl").read_text().splitlines()]
    assert stats["prompts"] == 3 and stats["samples"] == 12 and stats["prompts_skipped"] == {"no_prompt": 1}
    assert len(sft) == stats["sft_records"] >= 2 and len(pairs) == stats["preference_pairs"]
    rm = load_reward_model(tmp_path / "rm")
    for record in sft:
        prompt, best = record["messages"][:-1], record["messages"][-1]
        assert prompt[0] == {"role": "system", "content": "Be brief."}
        assert len(record["scores"]) == 4 and record["score"] == max(record["scores"])
        rescored = score_responses(rm, llama3_encoder(), [prompt], [best])[0]
        assert rescored == pytest.approx(record["score"], abs=1e-5)
    for pair in pairs:
        assert pair["chosen_score"] > pair["rejected_score"] and pair["chosen"] != pair["rejected"]

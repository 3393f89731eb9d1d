"""SFT data cleaning (Llama 3 §4.2.3): rules, apology rebalancing, reward quality, semantic dedup."""

import json

import pytest
import torch

from post_fixtures import llama3_encoder, one_thread, tiny_model, write_jsonl
from pasture.model import save
from pasture.post.clean import CleanConfig, clean_sft, semantic_dedup
from pasture.post.models import save_encoder
from pasture.post.reward_model import save_head


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def chat(answer: str, question: str = "q") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_semantic_dedup_keeps_the_best_of_near_duplicates():
    v = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0], [1.0, 0.01]]), dim=1)
    dropped = semantic_dedup(v, quality=[0.1, 0.9, 0.5, 0.2], threshold=0.95, seed=0)
    assert dropped == {0: 1, 3: 1}  # 1 has the best quality among the three near-identical ones


def test_clean_counts_every_removal_with_its_reason(tmp_path):
    save(tiny_model(seed=4), tmp_path / "m")
    save_head(torch.randn(1, 32), tmp_path / "m")
    save_encoder(llama3_encoder(), tmp_path / "m")
    records = ([chat("Great!!!! Wow!"), chat("so fun 😀😀😀😀")]
               + [chat(f"I'm sorry, I cannot do {i}.", f"q{i}") for i in range(3)]
               + [chat(f"answer number {i}", f"question {i}") for i in range(15)]
               + [chat("answer number 0", "question 0")])  # an exact duplicate
    data = write_jsonl(tmp_path / "chats.jsonl", records)
    out = tmp_path / "clean.jsonl"
    config = CleanConfig(max_apology_fraction=0.1, keep_fraction=0.5, device="cpu")
    stats = clean_sft([str(data)], out, config, reward_spec=str(tmp_path / "m"), embed_spec=str(tmp_path / "m"),
                      log=lambda *_: None)
    steps = stats["steps"]
    assert steps["rules"]["removed"] == {"excess_exclamation_marks": 1, "excess_emojis": 1}
    assert steps["apology_rebalance"] == {"removed": {"overused_apology": 2}, "kept": 17}  # 10% of 19 -> 1 kept
    assert steps["quality"] == {"removed": {"low_reward_quality": 8}, "kept": 9}
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    rejects = [json.loads(line) for line in (tmp_path / "clean.rejects.jsonl").read_text().splitlines()]
    assert len(kept) == stats["kept"] and len(kept) + len(rejects) == len(records)
    low = [r["score"] for r in rejects if r["reject_reason"] == "low_reward_quality"]
    assert min(r["score"] for r in kept) >= max(low)  # the top half by reward survived
    assert "semantic_dedup" in steps and steps["semantic_dedup"]["kept"] == len(kept)
    removed = sum(sum(s["removed"].values()) for s in steps.values())
    assert removed == len(rejects)

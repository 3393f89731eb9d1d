"""Two post-training rounds end to end through the `pasture` command, on a tiny model."""

import json

import pytest
import torch

from post_fixtures import llama3_encoder, one_thread, qa_conversations, qa_preferences, tiny_model, write_jsonl
from pasture.cli import main
from pasture.model import load, save
from pasture.post.models import save_encoder
from pasture.train.metrics import read_metrics


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def test_two_rounds_with_averaged_dpo(tmp_path):
    model = tiny_model(seed=5)
    torch.nn.init.zeros_(model.output.weight)  # samples end by chance, so rejection sampling keeps some
    save(model, tmp_path / "base")
    save_encoder(llama3_encoder(), tmp_path / "base")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": r["messages"]} for r in qa_preferences(3)])
    prefs = write_jsonl(tmp_path / "prefs.jsonl", qa_preferences(12))
    chats = write_jsonl(tmp_path / "chats.jsonl", qa_conversations(6))
    common = []
    for stage in ("reward", "sft", "dpo"):
        common += [f"{stage}.train.steps=2", f"{stage}.train.batch_size=2", f'{stage}.train.device="cpu"',
                   f"{stage}.log.progress=false", f"{stage}.checkpoint.every=0", f"{stage}.data.heldout_fraction=0.2",
                   f"{stage}.optim.warmup_steps=0"]
    common += ["sft.train.seq_len=96", "rejection.k=2", "rejection.max_tokens=300", 'rejection.device="cpu"']
    out = tmp_path / "rounds"
    argv = ["rounds", str(tmp_path / "base"), "--prompts", str(prompts), "--prefs", str(prefs), "--sft-data",
            str(chats), "--out", str(out), *common]
    assert main(argv) == 0
    summary = json.loads((out / "rounds.json").read_text())
    for r in (1, 2):
        folder = out / f"round_{r}"
        assert (folder / "samples.jsonl").is_file() and (folder / "samples.pairs.jsonl").is_file()
        assert [row["step"] for row in read_metrics(folder / "sft", "train")] == [1, 2]
        assert (folder / "dpo_seed0" / "summary.json").is_file() and (folder / "dpo_seed1" / "summary.json").is_file()
        a, _ = load(folder / "dpo_seed0")
        b, _ = load(folder / "dpo_seed1")
        soup, _ = load(folder / "dpo")
        name = "layers.0.attention.wq.weight"
        torch.testing.assert_close(soup.state_dict()[name], (a.state_dict()[name] + b.state_dict()[name]) / 2)
    assert summary["round_2"]["reward"] == str(out / "round_2" / "reward")
    assert summary["final"] == str(out / "round_2" / "dpo")
    # round 2 sampled with round 1's DPO model and trained its RM on round 1's new pairs too
    rm_data = json.loads((out / "round_2" / "reward" / "recipe.json").read_text())
    assert rm_data["train"]["steps"] == 2
    # a rerun finds every stage finished
    assert main(argv) == 0

"""`pasture quality-gate`: a quantized model against the original, by held-out perplexity and by the
reward model's score distributions (Llama 3 §6.2)."""

import copy
import json

import numpy as np
import pytest
import torch
from scipy import stats

from post_fixtures import llama3_encoder, one_thread, tiny_model, write_jsonl
from pasture.cli import main
from pasture.model import save
from pasture.post.models import save_encoder
from pasture.post.quality_gate import GateConfig, GateError, compare_scores, held_out_tokens, quality_gate
from pasture.post.reward_model import save_head
from pasture.serve.quantize import _linear_layers, perplexity, quantize


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def test_compare_scores_reports_the_ks_test_and_the_paired_shift():
    rng = np.random.default_rng(0)
    original = rng.normal(0.0, 2.0, 400)
    quantized = original + rng.normal(0.0, 0.05, 400)
    result = compare_scores(original.tolist(), quantized.tolist(), alpha=0.05, max_score_shift=0.1)
    expected = stats.ks_2samp(original, quantized)
    assert result["ks_statistic"] == pytest.approx(expected.statistic) and result["ks_pvalue"] == pytest.approx(expected.pvalue)
    difference = quantized - original
    assert result["mean_difference"] == pytest.approx(difference.mean())
    half = 1.96 * difference.std(ddof=1) / np.sqrt(400)
    assert result["mean_difference_95ci"] == pytest.approx([difference.mean() - half, difference.mean() + half])
    assert result["shift_in_original_std"] == pytest.approx(difference.mean() / original.std(ddof=1))
    assert result["original"]["p50"] == pytest.approx(np.quantile(original, 0.5))
    assert result["quantized"]["std"] == pytest.approx(quantized.std(ddof=1))
    assert result["n"] == 400 and result["passed"]


def test_compare_scores_fails_a_moved_distribution_and_a_small_systematic_shift():
    rng = np.random.default_rng(1)
    original = rng.normal(0.0, 1.0, 300)
    moved = compare_scores(original.tolist(), (original - 1.0).tolist(), alpha=0.05, max_score_shift=0.1)
    assert moved["ks_pvalue"] < 1e-6 and not moved["passed"]
    # every answer 0.2 std worse: too small for KS with 60 samples, caught by the mean-shift bound
    few = original[:60]
    nudged = compare_scores(few.tolist(), (few - 0.2 * few.std(ddof=1)).tolist(), alpha=0.05, max_score_shift=0.1)
    assert nudged["ks_pvalue"] > 0.05 and nudged["shift_in_original_std"] == pytest.approx(-0.2)
    assert not nudged["passed"]
    same = compare_scores([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], alpha=0.05, max_score_shift=0.1)
    assert same["ks_statistic"] == 0 and same["ks_pvalue"] == 1 and same["passed"]
    with pytest.raises(GateError, match="equally long"):
        compare_scores([1.0, 2.0], [1.0], alpha=0.05, max_score_shift=0.1)


def int8_exact(model):
    """Every linear weight a decode step reads moved onto its row's int8 grid, so int8 loses nothing."""
    with torch.no_grad():
        for parent, name in _linear_layers(model):
            weight = getattr(parent, name).weight
            scale = weight.abs().amax(dim=1, keepdim=True) / 127
            weight.copy_(torch.round(weight / scale) * scale)
    return model


def write_models(tmp_path, policy):
    save(policy, tmp_path / "policy")
    save_encoder(llama3_encoder(), tmp_path / "policy")
    save(tiny_model(seed=2), tmp_path / "rm")
    save_head(torch.randn(1, 32, generator=torch.Generator().manual_seed(3)), tmp_path / "rm")
    save_encoder(llama3_encoder(), tmp_path / "rm")
    text = tmp_path / "heldout.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 30)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"messages": [{"role": "user", "content": f"question {i}?"}]} for i in range(6)
    ] + [{"messages": [{"role": "assistant", "content": "no prompt"}]}])
    return text, prompts


def run_gate(tmp_path, capsys, *options):
    text, prompts = write_models(tmp_path, tiny_model(seed=1) if "lossy" in options else int8_exact(tiny_model(seed=1)))
    code = main(["quality-gate", str(tmp_path / "policy"), "--text", str(text), "--reward-model", str(tmp_path / "rm"),
                 "--prompts", str(prompts), "--samples-per-prompt", "2", "--max-tokens", "12", "--device", "cpu",
                 "--out", str(tmp_path / "gate.json"), *[o for o in options if o != "lossy"]])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "gate.json").read_text())
    return code, printed


def test_a_lossless_int8_model_passes_with_the_same_answers_and_scores(tmp_path, capsys):
    code, report = run_gate(tmp_path, capsys)
    assert code == 0 and report["passed"]
    assert report["perplexity"]["relative_change"] == pytest.approx(0.0, abs=1e-5)
    model = tiny_model(seed=1)
    tokens = held_out_tokens([str(tmp_path / "heldout.txt")], llama3_encoder().tokenizer, 32768)
    assert report["perplexity"]["tokens"] == len(tokens) - 1 == 30 * 45  # BOS + every byte, the first one predicted from BOS
    assert report["perplexity"]["original"] == pytest.approx(perplexity(int8_exact(model), tokens, 512), rel=1e-6)
    rewards = report["reward_scores"]
    assert rewards["prompts"] == 6 and rewards["prompts_skipped"] == {"no_prompt": 1} and rewards["n"] == 12
    assert rewards["identical_answers"] == 1.0  # same seeds, same numbers: the same tokens
    assert rewards["scores"]["original"] == rewards["scores"]["quantized"]
    assert rewards["ks_statistic"] == 0 and rewards["mean_difference"] == 0 and rewards["passed"]


def test_the_report_holds_what_the_verdict_is_computed_from(tmp_path, capsys):
    code, report = run_gate(tmp_path, capsys, "lossy", "--temperature", "1.0", "--max-perplexity-change", "0.5")
    model = tiny_model(seed=1)
    tokens = held_out_tokens([str(tmp_path / "heldout.txt")], llama3_encoder().tokenizer, 32768)
    after = perplexity(quantize(copy.deepcopy(model), "int8"), tokens, 512)
    assert report["perplexity"]["quantized"] == pytest.approx(after, rel=1e-6)
    assert report["perplexity"]["relative_change"] == pytest.approx(after / perplexity(model, tokens, 512) - 1, abs=1e-6)
    rewards = report["reward_scores"]
    again = compare_scores(rewards["scores"]["original"], rewards["scores"]["quantized"], 0.05, 0.1)
    assert {k: rewards[k] for k in again} == again
    assert code == (0 if report["passed"] else 1)
    assert report["passed"] == (report["perplexity"]["passed"] and rewards["passed"])


def test_the_gate_refuses_to_run_without_something_to_compare(tmp_path, capsys):
    save(tiny_model(seed=1), tmp_path / "policy")
    save_encoder(llama3_encoder(), tmp_path / "policy")
    assert main(["quality-gate", str(tmp_path / "policy"), "--device", "cpu"]) == 2
    assert "nothing to compare" in capsys.readouterr().err
    assert main(["quality-gate", str(tmp_path / "policy"), "--reward-model", str(tmp_path / "policy"),
                 "--device", "cpu"]) == 2
    assert "go together" in capsys.readouterr().err
    assert main(["quality-gate", str(tmp_path / "policy"), "--quantize", "fp8", "--text", "x.txt",
                 "--device", "cpu"]) == 2
    assert "CUDA" in capsys.readouterr().err


def test_a_damaging_quantizer_of_ones_own_fails_the_gate(tmp_path):
    text, _ = write_models(tmp_path, tiny_model(seed=1))

    def two_levels(model):  # every weight of the decode step's linears to the sign of itself times its row's mean size
        with torch.no_grad():
            for parent, name in _linear_layers(model):
                weight = getattr(parent, name).weight
                weight.copy_(weight.sign() * weight.abs().mean(dim=1, keepdim=True))
        return model

    report = quality_gate(str(tmp_path / "policy"), GateConfig(quantize="two-levels", device="cpu", progress=False),
                          [str(text)], quantizer=two_levels, log=lambda *_: None)
    assert report["config"]["quantize"] == "two-levels"
    assert abs(report["perplexity"]["relative_change"]) > 0.01 and not report["passed"]


def test_answers_the_reward_model_cannot_score_fail_the_gate_and_lose_nothing(tmp_path):
    _, prompts = write_models(tmp_path, tiny_model(seed=1))
    stop = llama3_encoder().stop_ids[0]

    class AlwaysStop(torch.nn.Module):  # every answer ends before its first token: empty
        def forward(self, hidden):
            logits = torch.full((*hidden.shape[:-1], 512), -100.0)
            logits[..., stop] = 100.0
            return logits

    def silence(model):
        model.output = AlwaysStop()
        return model

    report = quality_gate(str(tmp_path / "policy"), GateConfig(quantize="silent", device="cpu", progress=False,
                                                               max_tokens=8), reward_spec=str(tmp_path / "rm"),
                          prompts=[str(prompts)], quantizer=silence, log=lambda *_: None)
    rewards = report["reward_scores"]
    assert rewards["unscored"] == {"original": 0, "quantized": 6} and rewards["n"] == 0
    assert rewards["scores"]["quantized"] == [None] * 6 and None not in rewards["scores"]["original"]
    assert not rewards["passed"] and not report["passed"]
    json.dumps(report, allow_nan=False)  # strict JSON: no -Infinity

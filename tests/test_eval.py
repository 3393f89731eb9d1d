"""pasture eval: batched scores equal plain forwards, metrics equal their formulas, lm-eval's
prompts and the adapter agree with `pasture eval`, the sandbox contains what it runs."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pasture.cli import main as pasture_main
from pasture.eval.evaluator import EvalSettings, evaluate, humaneval_program
from pasture.eval.lm import EvalModel
from pasture.eval.metrics import extract_answer, GSM8K_FLEXIBLE, GSM8K_STRICT, gsm8k_scores, pass_at_k
from pasture.eval.sandbox import SandboxLimits, run_program
from pasture.eval.scoring import LoglikelihoodScorer, rolling_windows
from pasture.eval.tasks import EvalDataError, get_task, hellaswag_preprocess
from pasture.model import build, preset, save
from pasture.tokenizer import Tokenizer

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load("llama3")


@pytest.fixture(scope="module")
def model():
    config = dataclasses.replace(preset("tiny"), dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128256,
                                 max_seq_len=512)
    return build(config, seed=0).eval()


@pytest.fixture(scope="module")
def eval_model(model, tokenizer) -> EvalModel:
    return EvalModel(model, tokenizer, batch_size=4, progress=False, name="tiny-random")


def forward_loglikelihood(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """The reference: one plain forward over context + continuation."""
    tokens = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(tokens)[0].double(), -1)
    predicting = torch.arange(len(context) - 1, len(context) + len(continuation) - 1)
    targets = torch.tensor(continuation)
    picked = logprobs[predicting, targets]
    return float(picked.sum()), bool((logprobs[predicting].argmax(-1) == targets).all())


def test_batched_tree_scores_equal_plain_forwards(model):
    g = torch.Generator().manual_seed(0)

    def rand(n):
        return torch.randint(0, 128256, (n,), generator=g).tolist()

    shared_shots = rand(20)  # a few-shot prefix every group of a batch shares
    groups = []
    for i in range(9):
        question = shared_shots + rand(3 + i)
        groups.append([(question, rand(1 + (i + j) % 4)) for j in range(1 + i % 4)])
    groups.append([(shared_shots[:5], rand(2)), (shared_shots[:5] + rand(2), rand(3))])  # a choice inside another's context
    groups.append([([7, 8, 9], [10, 11]), ([7, 8, 9], [10, 11])])  # identical choices
    expected = [[forward_loglikelihood(model, c, x) for c, x in group] for group in groups]
    for batch_size in (1, 3, 16):
        got = LoglikelihoodScorer(model, batch_size, progress=False).score(groups)
        for group_expected, group_got in zip(expected, got):
            for (want_ll, want_greedy), (ll, greedy) in zip(group_expected, group_got):
                assert ll == pytest.approx(want_ll, abs=2e-4)
                assert greedy == want_greedy


def test_batches_hold_groups_of_similar_packed_length(model):
    lengths = [100, 95, 90, 85, 50, 45, 10]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    # full at 3 groups; 50 < 0.8 x 85 and 10 < 0.8 x 50 start new batches
    assert LoglikelihoodScorer(model, 3, progress=False)._batches(order, lengths) == [[0, 1, 2], [3], [4, 5], [6]]


def test_rolling_windows_predict_every_token_once(model):
    tokens = list(range(100, 1100))
    windows = rolling_windows(tokens, 1, 300)
    predicted = [t for _, cont in windows for t in cont]
    assert predicted == tokens
    assert all(len(c) + len(x) <= 301 for c, x in windows)
    assert windows[1][0] == tokens[299:300]  # full context: 300 tokens read, 300 predicted
    # a document shorter than the window: the rolling log-likelihood is one plain forward
    scorer = LoglikelihoodScorer(model, 2, progress=False)
    doc = list(range(500, 540))
    (score,), = scorer.score([[w] for w in rolling_windows(doc, 1, 300)])
    assert score[0] == pytest.approx(forward_loglikelihood(model, [1], doc)[0], abs=2e-4)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CHOICE_ROWS = [
    {"text": "Question: Which is a fruit?\nAnswer:", "choices": ["apple", "a large granite boulder", "car"], "target": 0},
    {"text": "Question: The sky is\nAnswer:", "choices": ["blue", "green"], "target": 1},
    {"text": "2 + 2 =", "choices": ["4", "five", "twenty-two"], "target": 0},
    {"text": "Cats say", "choices": ["meow", "moo moo moo moo"], "target": 1},
]


def test_accuracies_equal_hand_computed(eval_model, model, tokenizer, tmp_path):
    task_file = _write_jsonl(tmp_path / "mine.jsonl", CHOICE_ROWS)
    results = evaluate(eval_model, [str(task_file)])
    metrics = results["results"]["mine"]
    hits = {"acc": 0, "acc_norm": 0, "acc_per_token": 0}
    for row in CHOICE_ROWS:
        context = tokenizer.encode(row["text"], bos=True)
        lls, ntoks = [], []
        for choice in row["choices"]:
            continuation = tokenizer.encode(row["text"] + " " + choice, bos=True)[len(context):]
            lls.append(forward_loglikelihood(model, context, continuation)[0])
            ntoks.append(len(continuation))
        hits["acc"] += max(range(len(lls)), key=lambda i: lls[i]) == row["target"]
        hits["acc_norm"] += max(range(len(lls)), key=lambda i: lls[i] / len(row["choices"][i])) == row["target"]
        hits["acc_per_token"] += max(range(len(lls)), key=lambda i: lls[i] / ntoks[i]) == row["target"]
    for metric, hit in hits.items():
        assert metrics[metric] == pytest.approx(hit / len(CHOICE_ROWS))
    assert metrics["n"] == 4
    sample = results["samples"]["mine"][0]
    assert sample["context"] == CHOICE_ROWS[0]["text"] and sample["gold"] == 0 and len(sample["loglikelihoods"]) == 3


def test_lm_eval_prompts_from_package_data():
    arc = get_task("arc_easy").docs("cloze")
    assert len(arc) == 570
    assert arc[0].requests("")[0] == ("Question: Which technology was developed most recently?\nAnswer:",
                                      " cellular telephone")
    assert arc[0].gold == 0
    mc = get_task("arc_easy").docs("mc")[0]
    assert mc.text.endswith("\nA. cellular telephone\nB. television\nC. refrigerator\nD. airplane\nAnswer:")
    assert mc.choices == ["A", "B", "C", "D"]
    hellaswag = get_task("hellaswag").docs("cloze")[0]
    assert hellaswag.text == "Roof shingle removal: A man is sitting on a roof. He"
    assert hellaswag.gold == 3 and len(hellaswag.choices) == 4
    assert hellaswag_preprocess("How to x [title] Step one [header] done") == "How to x. Step one done"
    wino = get_task("winogrande").docs("cloze")[0]
    assert wino.partial and wino.requests("")[0][1].startswith(" always got")
    assert len(get_task("mmlu").group) == 57
    mmlu = get_task("mmlu_abstract_algebra")
    prefix = mmlu.contexts(mmlu.docs("mc")[:1], 5, "mc")[0]
    assert prefix.startswith("The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    assert prefix.count("\nAnswer:") == 5
    gsm8k = get_task("gsm8k")
    assert len(gsm8k.docs("cloze")) == 1319 and len(gsm8k.shots_pool("cloze")) == 8
    assert get_task("humaneval").docs("cloze")[0].extra["task_id"] == "HumanEval/0"
    with pytest.raises(EvalDataError, match="unknown task"):
        get_task("no_such_task")


def test_random_fewshot_skips_the_evaluated_item():
    task = get_task("piqa")
    docs = task.docs("cloze")[:20]
    for doc, context in zip(docs, task.contexts(docs, 3, "cloze")):
        assert context.count("\nAnswer:") == 3 and doc.text not in context


def test_jsonl_task_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "choices": ["x", "y"], "target": 0}\n{"text": "b", "choices": ["x"], "target": 0}\n')
    with pytest.raises(EvalDataError, match="bad.jsonl:2"):
        get_task(str(bad))


def test_gsm8k_answer_extraction_as_lm_eval():
    reference = "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n#### 18"
    assert gsm8k_scores("She makes 9 * 2 = $18.\n#### 18", reference) == {
        "exact_match,strict-match": 1.0, "exact_match,flexible-extract": 1.0}
    assert gsm8k_scores("9 * 2 = 18 dollars, so the answer is $18.", reference) == {
        "exact_match,strict-match": 0.0, "exact_match,flexible-extract": 1.0}
    assert extract_answer("#### 1,234.", GSM8K_STRICT, last=False) == "1,234."
    assert extract_answer("no numbers", GSM8K_FLEXIBLE, last=True) == "[invalid]"


def test_pass_at_k_is_the_unbiased_estimator():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 10), (20, 19, 2), (200, 37, 100), (5, 5, 5)]:
        expected = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0


LIMITS = SandboxLimits(timeout=5, cpu_seconds=3, memory_bytes=512 << 20, file_bytes=1 << 16)


def test_sandbox_contains_loops_memory_network_and_files(tmp_path):
    assert run_program("assert sum(range(10)) == 45", LIMITS).status == "passed"
    assert run_program("while True:\n    pass", LIMITS).status == "timeout"
    hog = run_program("blocks = []\nwhile True:\n    blocks.append(bytearray(50 << 20))", LIMITS)
    assert hog.status == "failed" and "MemoryError" in hog.output
    net = run_program("import socket\nsocket.create_connection(('127.0.0.1', 80), timeout=1)", LIMITS)
    assert net.status == "failed" and "network" in net.output
    outside = tmp_path / "escaped.txt"
    assert run_program(f"open({str(outside)!r}, 'w').write('x')", LIMITS).status == "failed"
    assert not outside.exists()
    big = run_program("open('big.bin', 'wb').write(b'x' * (1 << 20))", LIMITS)
    assert big.status == "failed" and "File too large" in big.output


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    problems = [d.extra for d in get_task("humaneval").docs("cloze")[:3]]
    for problem in problems:
        assert run_program(humaneval_program(problem, problem["canonical_solution"]), LIMITS).passed
        assert not run_program(humaneval_program(problem, "    return None\n"), LIMITS).passed


def test_cli_writes_lm_eval_shaped_results(model, tmp_path, capsys):
    save(model, tmp_path / "ckpt")
    task_file = _write_jsonl(tmp_path / "mine.jsonl", CHOICE_ROWS)
    docs = _write_jsonl(tmp_path / "docs.jsonl", [{"text": "Hello world, this is a document."}, {"text": "é" * 40}])
    out = tmp_path / "results.json"
    code = pasture_main(["eval", str(tmp_path / "ckpt"), "--tokenizer", "llama3", "--tasks",
                         f"arc_easy,{task_file},{docs}", "--limit", "3", "--batch-size", "2", "--out", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    assert set(results) == {"results", "config"}
    assert results["results"]["arc_easy"]["n"] == 3 and 0 <= results["results"]["arc_easy"]["acc_norm"] <= 1
    assert results["results"]["docs"]["bits_per_byte"] > 0 and results["results"]["docs"]["n"] == 2
    assert results["config"]["limit"] == 3 and results["config"]["batch_size"] == 2
    samples = [json.loads(line) for line in out.with_name("results.samples.jsonl").read_text().splitlines()]
    assert [s["task"] for s in samples] == ["arc_easy"] * 3 + ["mine"] * 3 + ["docs"] * 2
    assert "| arc_easy | 3 | 0 |" in capsys.readouterr().out
    assert pasture_main(["eval", str(tmp_path / "ckpt"), "--tokenizer", "llama3", "--tasks", "nope"]) == 2


ARC_YAML = """\
task: arc_easy_local
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def _lm_eval_task_dir(tmp_path: Path, n: int) -> Path:
    """lm-eval's own arc_easy YAML, reading the first n ARC-Easy rows from a local JSON file."""
    from pasture.eval.data import read_arrow_rows
    from pasture.eval.tasks import _literal

    rows = [{**r, "choices": _literal(r["choices"])} for r in read_arrow_rows("ai2_arc/ARC-Easy/validation")[:n]]
    data = _write_jsonl(tmp_path / "arc.jsonl", rows)
    (tmp_path / "arc_easy_local.yaml").write_text(ARC_YAML.format(data=data))
    return tmp_path


def test_lm_eval_cli_runs_pasture_with_the_same_numbers_as_pasture_eval(eval_model, model, tmp_path):
    """`lm_eval --model pasture` as installed (the .pth hook processed at start-up, then lm-eval's
    CLI) on lm-eval's arc_easy YAML over the first ARC-Easy rows: every item's log-likelihoods and
    the accuracies equal `pasture eval`'s."""
    n = 4
    save(model, tmp_path / "ckpt")
    task_dir = _lm_eval_task_dir(tmp_path, n)
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "pasture-lm-eval.pth").write_text((SRC / "pasture-lm-eval.pth").read_text())
    script = textwrap.dedent(f"""
        import site, sys
        site.addsitedir({str(site_dir)!r})
        from lm_eval.__main__ import cli_evaluate
        sys.argv = ["lm_eval", "--model", "pasture", "--model_args", "path={tmp_path / 'ckpt'},tokenizer=llama3",
                    "--tasks", "arc_easy_local", "--include_path", {str(task_dir)!r},
                    "--output_path", {str(tmp_path / 'out')!r}, "--log_samples"]
        cli_evaluate()
    """)
    env = {"PYTHONPATH": str(SRC), "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    theirs = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]["arc_easy_local"]
    their_items = [json.loads(line) for line in next((tmp_path / "out").rglob("samples_*.jsonl")).read_text().splitlines()]
    ours = evaluate(eval_model, ["arc_easy"], EvalSettings(limit=n))
    assert theirs["acc,none"] == pytest.approx(ours["results"]["arc_easy"]["acc"])
    assert theirs["acc_norm,none"] == pytest.approx(ours["results"]["arc_easy"]["acc_norm"])
    for item in sorted(their_items, key=lambda s: s["doc_id"]):
        their_ll = [float(r[0]) for r in item["filtered_resps"]]
        assert their_ll == pytest.approx(ours["samples"]["arc_easy"][item["doc_id"]]["loglikelihoods"], abs=1e-4)


def test_generate_until_is_greedy_through_the_engine_and_cut_at_stop(eval_model, model, tokenizer, tmp_path):
    rows = [{"text": "Question: What is 2 + 3?\nAnswer:", "target": "5", "until": ["\n"], "max_gen_toks": 6},
            {"text": "Once upon a time", "target": "there", "until": [" the"], "max_gen_toks": 6}]
    task_file = _write_jsonl(tmp_path / "gen.jsonl", rows)
    samples = evaluate(eval_model, [str(task_file)])["samples"]["gen"]
    for row, sample in zip(rows, samples):
        ids = tokenizer.encode(row["text"], bos=True)
        generated: list[int] = []
        with torch.no_grad():
            for _ in range(row["max_gen_toks"]):
                generated.append(int(model(torch.tensor([ids + generated]))[0, -1].argmax()))
        text = tokenizer.decode(generated)
        for stop in row["until"]:
            text = text.split(stop)[0]
        assert sample["generation"] == text
        assert sample["exact_match"] == float(text.strip() == row["target"])


def test_in_loop_evaluation_writes_eval_records_equal_to_pasture_eval(tmp_path):
    from token_data import write_progressions

    from pasture.eval.inloop import from_recipe
    from pasture.runs import load as load_run
    from pasture.tokenizer.tokenizer import write_bpe_ranks
    from pasture.train.metrics import read_metrics
    from pasture.train.pretrain import pretrain
    from pasture.train.recipe import load_recipe, parse_recipe

    data = write_progressions(tmp_path / "tokens", 600, 60, 10, 60)  # 600 >= 256 bytes + 256 specials
    run = tmp_path / "run"
    run.mkdir()
    write_bpe_ranks([bytes([b]) for b in range(256)], run / "tokenizer.model")  # a byte-level tokenizer
    task_file = _write_jsonl(tmp_path / "mine.jsonl", CHOICE_ROWS)
    raw = load_recipe("tiny", [f"data.train=[\"{data}\"]", f"log.dir=\"{run}\"", "log.progress=false",
                               "log.tensorboard=false", "train.seq_len=32", "train.batch_size=2", "train.batch_ramp=[]",
                               "train.steps=7", "train.anneal_steps=0", "optim.warmup_steps=2", "eval.every=0",
                               "eval.batches=0", "checkpoint.every=0", "checkpoint.anneal_every=0", "model.dim=32",
                               "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "model.multiple_of=32",
                               f"eval.tasks=[\"{task_file}\"]", "eval.tasks_every=3", "eval.tasks_limit=4"])
    recipe = parse_recipe(raw)
    pretrain(recipe, raw, log=lambda *_: None, benchmarks=from_recipe(recipe))
    records = read_metrics(run, "eval")
    assert [r["step"] for r in records] == [3, 6, 7]
    model, _ = load_run(run)
    final = evaluate(EvalModel(model, Tokenizer.load(run / "tokenizer.model"), progress=False), [str(task_file)])
    for metric in ("acc", "acc_norm", "acc_per_token"):
        assert records[-1][f"mine/{metric}"] == pytest.approx(final["results"]["mine"][metric])

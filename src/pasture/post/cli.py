"""`pasture sft | reward | dpo | rejection-sample | average | clean-sft | rounds | quality-gate`.

Handlers import torch and the trainers inside, so `pasture --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import re

OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=")

MODEL_HELP = ("a run folder, a checkpoint, a Hugging Face or Meta folder, a GGUF file or a preset; its chat "
              "format comes from its tokenizer files (tokenizer.model: Llama 3; tokenizer.json + chat template)")


def split_overrides(args: argparse.Namespace, *list_options: str) -> list[str]:
    """The recipe overrides, including `key=value` items a preceding list option (--data ...) swallowed."""
    overrides = list(args.overrides)
    for name in list_options:
        values = getattr(args, name)
        overrides += [v for v in values if OVERRIDE.match(v)]
        setattr(args, name, [v for v in values if not OVERRIDE.match(v)])
    return overrides


def register(sub: argparse._SubParsersAction) -> None:
    _register_trainer(sub, "sft", "supervised fine-tuning on conversations (loss on the assistant's tokens)",
                      "FILE", "SFT conversations: JSONL or Parquet of {\"messages\": [...]} (docs/formats.md)")
    _register_trainer(sub, "reward", "train a Bradley-Terry reward model on preference pairs",
                      "PREFS", "preference records: {\"messages\", \"chosen\", \"rejected\", \"edited\"?}")
    _register_trainer(sub, "dpo", "Direct Preference Optimization (Llama 3: beta 0.1, lr 1e-5, NLL 0.2)",
                      "PREFS", "preference records: {\"messages\", \"chosen\", \"rejected\", \"edited\"?}")
    _register_rejection(sub)
    _register_average(sub)
    _register_clean(sub)
    _register_rounds(sub)
    _register_quality_gate(sub)


def _register_trainer(sub, name: str, help_text: str, metavar: str, data_help: str) -> None:
    p = sub.add_parser(
        name, help=help_text,
        description=f"{help_text[0].upper()}{help_text[1:]}. Writes RUN with recipe.json, metrics.jsonl, "
        "checkpoints (the final model: `pasture.model.load(RUN)`), the tokenizer, data.json (records kept and "
        "skipped per reason) and summary.json. The recipe is a shipped name (recipes/post/) or a TOML file; "
        "override any key with section.key=value (e.g. train.steps=200 optim.lr=2e-5); resume=auto continues "
        "the run in RUN. Under torchrun, [parallel] picks the layout.",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--data", nargs="+", required=True, metavar=metavar, help=data_help)
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    p.add_argument("--recipe", default=name, help=f"recipe name or TOML path (default: {name})")
    p.add_argument("--tokenizer", default=None, help="tokenizer / chat template folder, or llama3 (default: MODEL's)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, values as TOML literals")
    p.set_defaults(func=_train, method=name)


def _train(args: argparse.Namespace) -> int:
    from pasture.post.dpo import dpo
    from pasture.post.recipe import load_recipe
    from pasture.post.reward import reward
    from pasture.post.sft import sft
    from pasture.post.trainer import log_main

    overrides = split_overrides(args, "data") + ([f'model.tokenizer="{args.tokenizer}"'] if args.tokenizer else [])
    recipe, raw = load_recipe(args.recipe, overrides)
    run = {"sft": sft, "reward": reward, "dpo": dpo}[args.method]
    summary = run(args.model, args.data, args.out, recipe, raw)
    line = f"done: {summary['steps']} steps, final loss {summary['final_loss']:.4f}"
    for key in ("accuracy", "preference_accuracy", "reward_accuracy"):
        if key in summary:
            line += f", held-out {key.replace('_', ' ')} {summary[key]:.3f}"
    log_main(line + f"; run folder {args.out}")
    return 0


def _register_rejection(sub) -> None:
    p = sub.add_parser(
        "rejection-sample", help="sample K responses per prompt, keep the reward model's best",
        description="Rejection sampling (Llama 3 §4.2.2): K samples per prompt through the serving engine, "
        "scored by a reward model. Writes the best per prompt as SFT data (--out, with score and scores) and "
        "best-vs-worst preference pairs (--pairs-out, default OUT.pairs.jsonl, with chosen_score / "
        "rejected_score). Samples cut off by --max-tokens are never kept.",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--reward", required=True, metavar="RM", help="reward model run folder (`pasture reward`)")
    p.add_argument("--prompts", nargs="+", required=True, metavar="FILE",
                   help="SFT-format records without the final assistant turn (one there is dropped)")
    p.add_argument("--k", type=int, default=4, help="samples per prompt (Llama 3: 10-30)")
    p.add_argument("--out", required=True, metavar="FILE", help="SFT JSONL to write")
    p.add_argument("--pairs-out", default=None, metavar="FILE", help="preference JSONL (default: OUT.pairs.jsonl)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--system-prompt", action="append", default=[], metavar="TEXT",
                   help="system prompt(s) cycled over prompts that have none (repeat the option)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="sequences decoded together")
    p.add_argument("--tokenizer", default=None, help="the policy's tokenizer / chat template (default: MODEL's)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_rejection)


def _rejection(args: argparse.Namespace) -> int:
    from pasture.post.rejection import RejectionConfig, rejection_sample

    config = RejectionConfig(k=args.k, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                             system_prompts=args.system_prompt, seed=args.seed, batch_size=args.batch_size,
                             device=args.device)
    stats = rejection_sample(args.model, args.reward, args.prompts, args.out, config, args.pairs_out, args.tokenizer)
    print(json.dumps(stats, indent=2))
    return 0


def _register_average(sub) -> None:
    p = sub.add_parser(
        "average", help="average the weights of several models (a model soup)",
        description="Average models of the same architecture (Llama 3 averages each round's runs). Refuses "
        "models that differ, naming the first tensor that differs. Writes a pasture model folder.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=_average)


def _average(args: argparse.Namespace) -> int:
    from pasture.post.average import average_models

    average_models(args.models, args.out)
    return 0


def _register_clean(sub) -> None:
    p = sub.add_parser(
        "clean-sft", help="clean SFT data as Llama 3 §4.2.3: rules, reward-model quality, semantic dedup",
        description="Rule-based filters (excess emojis / exclamation marks, overused apologetic phrases "
        "rebalanced), quality by a reward model (keep the top quartile), semantic de-duplication (mean-pooled "
        "hidden states of MODEL, clusters, best first, drop above a cosine threshold). Every removal is counted "
        "with its reason in OUT.stats.json; removed records go to OUT.rejects.jsonl with the reason.",
    )
    p.add_argument("--data", nargs="+", required=True, metavar="FILE")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--reward", default=None, metavar="RM", help="reward model for quality (omit: no quality step)")
    p.add_argument("--embed", default=None, metavar="MODEL", help="model whose hidden states embed (omit: no dedup)")
    p.add_argument("--keep-fraction", type=float, default=0.25, help="quality: share kept (top quartile)")
    p.add_argument("--cosine", type=float, default=0.95, help="dedup: drop above this similarity")
    p.add_argument("--max-apology-fraction", type=float, default=0.05,
                   help="keep at most this share of responses opening with an apology")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_clean)


def _clean(args: argparse.Namespace) -> int:
    from pasture.post.clean import CleanConfig, clean_sft

    config = CleanConfig(keep_fraction=args.keep_fraction, cosine_threshold=args.cosine,
                         max_apology_fraction=args.max_apology_fraction, device=args.device)
    stats = clean_sft(args.data, args.out, config, reward_spec=args.reward, embed_spec=args.embed)
    print(json.dumps(stats, indent=2))
    return 0


def _register_rounds(sub) -> None:
    p = sub.add_parser(
        "rounds", help="post-training rounds: reward model, rejection sampling, SFT, DPO (x N)",
        description="Chain the stages per a recipe (recipes/post/rounds.toml): each round trains a reward model "
        "on the preferences, rejection-samples the prompts with the current model, runs SFT on the kept "
        "samples (plus any SFT data), then DPO on the preferences plus the new pairs, averaging where the "
        "recipe says. Round r writes OUT/round_r/{reward,samples,sft,dpo,...}; a rerun skips finished stages.",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--prompts", nargs="+", required=True, metavar="FILE")
    p.add_argument("--prefs", nargs="+", required=True, metavar="PREFS", help="human preference data")
    p.add_argument("--sft-data", nargs="*", default=[], metavar="FILE", help="SFT data mixed into every round")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--recipe", default="rounds")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_rounds)


def _rounds(args: argparse.Namespace) -> int:
    from pasture.post.rounds import load_rounds_recipe, run_rounds

    recipe = load_rounds_recipe(args.recipe, split_overrides(args, "prompts", "prefs", "sft_data"))
    summary = run_rounds(args.model, args.prompts, args.prefs, args.sft_data, args.out, recipe)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _register_quality_gate(sub) -> None:
    p = sub.add_parser(
        "quality-gate", help="check a quantized model against the original: perplexity and reward-score distributions",
        description="Quantize MODEL (int8 weight-only on CPU, Llama 3's FP8 recipe on CUDA) and compare it with the "
        "original, as Llama 3 §6.2 does: held-out perplexity (--text) must stay within --max-perplexity-change of the original's; "
        "with --reward-model and --prompts both models answer the prompts with the same sampling seeds and the "
        "reward model's score distributions must not differ (two-sample KS test at --alpha, mean shift at most "
        "--max-score-shift standard deviations). Prints the report (JSON, every score included), writes it to "
        "--out, and exits 1 when the gate fails.",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--quantize", default="int8", choices=("int8", "fp8"), help="what to check (default int8)")
    p.add_argument("--text", nargs="+", default=[], metavar="FILE",
                   help="held-out documents for perplexity: JSONL / Parquet documents or plain text files")
    p.add_argument("--reward-model", default=None, metavar="RM", help="reward model folder (`pasture reward`)")
    p.add_argument("--prompts", nargs="+", default=[], metavar="FILE",
                   help="SFT-format records without the final assistant turn, for the reward comparison")
    p.add_argument("--samples-per-prompt", type=int, default=1, help="answers per prompt and model")
    p.add_argument("--max-tokens", type=int, default=256, help="longest answer")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-text-tokens", type=int, default=32768, help="held-out tokens scored at most")
    p.add_argument("--max-perplexity-change", type=float, default=0.01, help="relative, either way; default 0.01 (1%%)")
    p.add_argument("--alpha", type=float, default=0.05, help="level of the KS test on the score distributions")
    p.add_argument("--max-score-shift", type=float, default=0.1,
                   help="largest mean score change, in standard deviations of the original's scores")
    p.add_argument("--batch-size", type=int, default=16, help="sequences decoded together")
    p.add_argument("--tokenizer", default=None, help="MODEL's tokenizer / chat template (default: MODEL's)")
    p.add_argument("--out", default=None, metavar="FILE", help="write the report here too")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_quality_gate)


def _quality_gate(args: argparse.Namespace) -> int:
    import sys

    from pasture.post.quality_gate import GateConfig, quality_gate, write_report

    config = GateConfig(quantize=args.quantize, max_perplexity_change=args.max_perplexity_change,
                        alpha=args.alpha, max_score_shift=args.max_score_shift, max_text_tokens=args.max_text_tokens,
                        samples_per_prompt=args.samples_per_prompt, temperature=args.temperature, top_p=args.top_p,
                        max_tokens=args.max_tokens, seed=args.seed, batch_size=args.batch_size, device=args.device)
    report = quality_gate(args.model, config, args.text, args.reward_model, args.prompts, args.tokenizer,
                          log=lambda line: print(line, file=sys.stderr))
    if args.out:
        write_report(report, args.out)
    print(json.dumps(report, indent=2))
    print(f"quality gate {'passed' if report['passed'] else 'FAILED'}", file=sys.stderr)
    return 0 if report["passed"] else 1

"""`pasture speedrun`: every stage end to end."""

from __future__ import annotations

import argparse

from pasture.cli_args import byte_size
from pasture.speedrun import SpeedrunConfig, format_headline, speedrun


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "speedrun",
        description="Grow a small Llama from the text already on this machine (the Python standard "
        "library, installed packages' docs, /usr/share/doc, man pages) or from --source files, and write "
        "a report card. The default tiny preset takes about 10 minutes on 2 CPU cores and ends with a "
        "held-out bits-per-byte compared against a unigram model and compressors on the same text; "
        "then post-training (reward model, SFT, rejection sampling, DPO on question-answer pairs made from "
        "the standard library's docstrings) turns it into a chat model for `pasture chat RUNS_DIR/NAME`. "
        "Rerunning the same command skips finished stages and resumes training. Trailing key=value pairs "
        "override the pre-training recipe (e.g. train.steps=100); post.FIELD=VALUE pairs size post-training "
        "(e.g. post.dpo_steps=30; fields: pairs, heldout_fraction, reward_steps, sft_steps, dpo_steps, dpo_lr, "
        "batch_size, seq_len, sample_prompts, k, max_tokens, samples_shown).",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="pre-training recipe overrides, and post.FIELD=VALUE post-training settings")
    p.add_argument("--name", default="speedrun", help="run name: everything goes under RUNS_DIR/NAME (default speedrun)")
    p.add_argument("--runs-dir", default="runs", help="parent folder of run folders (default runs)")
    p.add_argument("--preset", default="tiny", help="tiny (CPU, default), 125m, 1b, 8b: picks the pre-training recipe")
    p.add_argument("--source", nargs="+", default=[],
                   help="files, folders or globs of WARC, HTML, JSONL(.zst), Parquet or text instead of the default roots")
    p.add_argument("--max-bytes", type=byte_size, default="24M", help="text budget for the default roots (default 24M)")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE ranks of the trained tokenizer (default 4096)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="documents held out for evaluation (default 0.1)")
    p.add_argument("--no-curate", action="store_true", help="skip the curation pipeline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", action="append", default=None, help="sample prompt (repeatable)")
    p.add_argument("--no-post", action="store_true", help="stop after pre-training: no post-training stage")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_speedrun)


def _speedrun(args: argparse.Namespace) -> int:
    cfg = SpeedrunConfig(
        name=args.name, runs_dir=args.runs_dir, preset=args.preset, sources=args.source, max_bytes=args.max_bytes,
        vocab_size=args.vocab_size, val_fraction=args.val_fraction, seed=args.seed, curate=not args.no_curate,
        recipe_overrides=[o for o in args.overrides if not o.startswith("post.")],
        post_overrides=[o for o in args.overrides if o.startswith("post.")], post=not args.no_post,
        progress=not args.no_progress,
    )
    if args.prompt:
        cfg.prompts = args.prompt
    summary = speedrun(cfg)
    print(format_headline(summary))
    return 0

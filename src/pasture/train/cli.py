"""The training package's commands: `pasture tokenize`, `pretrain`, `generate` and `plan`."""

from __future__ import annotations

import argparse
import re
from importlib.resources import files
from pathlib import Path

from pasture import runs
from pasture.errors import PastureError
from pasture.model.config import preset
from pasture.runtime import resolve_device
from pasture.tokenizer import Tokenizer, find_tokenizer, resolve_tokenizer_path
from pasture.train import parallel
from pasture.train.generate import SamplingParams, generate
from pasture.train.plan import render
from pasture.train.pretrain import pretrain
from pasture.train.recipe import build_model_config, load_recipe, parse_recipe
from pasture.train.tokenize import DEFAULT_SHARD_TOKENS, tokenize_documents


def register(sub: argparse._SubParsersAction) -> None:
    _register_tokenize(sub)
    _register_pretrain(sub)
    _register_generate(sub)
    _register_plan(sub)


def _register_tokenize(sub: argparse._SubParsersAction) -> None:
    tokenize = sub.add_parser(
        "tokenize",
        description="Encode documents (JSONL, JSONL.zst, Parquet or text files; folders and globs "
        "welcome) into a token dataset folder: uint32 token shards, document offsets and index.json "
        "(see docs/formats.md, 'Token shards'). Runs on all cores; the output does not depend on "
        "the number of workers. Each document becomes BOS + text + EOS; empty ones are skipped.",
    )
    tokenize.add_argument("--tokenizer", required=True,
                          help="tokenizer.model path, a folder holding one, or 'llama3' for Meta's")
    tokenize.add_argument("--input", required=True, nargs="+", metavar="DOCS",
                          help="document files, folders or globs")
    tokenize.add_argument("--out", required=True, metavar="SHARDS", help="output dataset folder")
    tokenize.add_argument("--val-fraction", type=float, default=0.0,
                          help="share of documents held out in the 'val' split, chosen by a hash of "
                          "the document id (default 0)")
    tokenize.add_argument("--shard-tokens", type=int, default=None,
                          help="a shard closes at the first document end past this many tokens (default 100M)")
    tokenize.add_argument("--workers", type=int, default=None, help="encoding processes (default: all cores)")
    tokenize.add_argument("--no-bos", dest="bos", action="store_false", help="do not start documents with BOS")
    tokenize.add_argument("--no-eos", dest="eos", action="store_false", help="do not end documents with EOS")
    tokenize.add_argument("--vocab-size", type=int, default=None,
                          help="reject ids at or above this (default: the tokenizer's size); for a model "
                          "whose embedding is smaller than the tokenizer")
    tokenize.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    tokenize.add_argument("--quiet", action="store_true", help="no progress bar")
    tokenize.set_defaults(func=_tokenize)


def _tokenize(args: argparse.Namespace) -> int:
    shard_tokens = DEFAULT_SHARD_TOKENS if args.shard_tokens is None else args.shard_tokens
    stats = tokenize_documents(
        args.input, args.tokenizer, args.out, workers=args.workers, val_fraction=args.val_fraction,
        shard_tokens=shard_tokens, bos=args.bos, eos=args.eos, vocab_size=args.vocab_size,
        overwrite=args.overwrite, progress=not args.quiet,
    )
    for name, split in stats["splits"].items():
        if split["documents"]:
            print(f"{name}: {split['documents']:,} documents, {split['tokens']:,} tokens, "
                  f"{split['bytes']:,} bytes in {split['shards']} shard(s)")
    print(f"wrote {stats['out_dir']} ({stats['empty_documents']:,} empty documents skipped, "
          f"{stats['tokens_per_second']:,.0f} tokens/s on {stats['workers']} worker(s))")
    return 0


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped in pasture/recipes."""
    def by_size(name: str) -> tuple[float, str]:
        size = re.match(r"(\d+)([mb])", name)
        return (int(size[1]) * (1e-3 if size[2] == "m" else 1), name) if size else (0.0, name)

    return sorted((f.name[:-5] for f in files("pasture").joinpath("recipes").iterdir() if f.name.endswith(".toml")),
                  key=by_size)


def _register_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        description=f"Pre-train from a recipe: a shipped name ({', '.join(shipped_recipes())}) or a TOML "
        "path with sections [model] [data] [train] [optim] [checkpoint] [eval] [log] [parallel]. Override "
        "any key with section.key=value, e.g. `pasture pretrain tiny data.train='[\"tokens\"]' "
        "train.steps=500`; a misspelt key is an error naming the section's keys. resume=auto continues "
        "from the newest valid checkpoint in log.dir. Under torchrun, [parallel] picks the layout "
        "(docs/scaling-out.md).",
    )
    p.add_argument("recipe", help="shipped recipe name or path to a TOML recipe")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, values as TOML literals")
    p.set_defaults(func=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    raw = load_recipe(args.recipe, args.overrides)
    summary = pretrain(parse_recipe(raw), raw)
    line = f"done: {summary['steps']} steps, {summary['tokens_seen']:,} tokens, final loss {summary['final_loss']:.4f}"
    if "val_bpb" in summary:
        line += f", val loss {summary['val_loss']:.4f}, val bits/byte {summary['val_bpb']:.4f}"
    print(line + f"; run folder {summary['run_dir']}")
    return 0


def _register_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        description="Sample a continuation with a KV cache. CKPT is a run folder (its newest valid "
        "checkpoint), a checkpoint folder, or a pasture / Hugging Face / Meta model folder.",
    )
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--prompt", required=True, help="text to continue (a <|begin_of_text|> is prepended)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.model path or `llama3` (default: the one in the run or model folder)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.6, help="0 for greedy")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", type=int, nargs="*", default=None,
                   help="stop token ids (default: the tokenizer's end-of-text, end-of-turn, end-of-message)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every token (slow; for checking)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model, _ = runs.load(args.checkpoint, device=device)
    model.eval()
    tokenizer = Tokenizer.load(resolve_tokenizer_path(find_tokenizer(Path(args.checkpoint), args.tokenizer)))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    stop = set(args.stop) if args.stop is not None else set(tokenizer.stop_tokens)
    ids = generate(model, tokenizer.encode(args.prompt, bos=True), params, stop, use_cache=not args.no_cache)
    print(args.prompt + tokenizer.decode(ids))
    return 0


def _register_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        description="Print parameters, training FLOPs per token and memory per GPU (weights, gradients, "
        "optimizer, activations with and without activation checkpointing) for the recipe's [parallel] "
        "layout at each sequence length, and whether it fits. Same recipe loading and overrides as "
        "`pasture pretrain`, e.g. `pasture plan 405b --gpus 16384`.",
    )
    p.add_argument("recipe", help="shipped recipe name or path to a TOML recipe")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, values as TOML literals")
    p.add_argument("--gpus", type=int, default=None,
                   help="world size (default: the product of the layout, when parallel.dp_shard is not -1)")
    p.add_argument("--gpu-memory", type=float, default=80.0, metavar="GiB", help="memory per GPU (default 80)")
    p.set_defaults(func=_plan)


def _plan(args: argparse.Namespace) -> int:
    recipe = parse_recipe(load_recipe(args.recipe, args.overrides))
    cfg, t = recipe.parallel, recipe.train
    gpus = args.gpus
    if gpus is None:
        if cfg.dp_shard == -1:
            raise PastureError("parallel.dp_shard=-1 takes whatever the world size leaves: give --gpus N")
        gpus = cfg.dp_replicate * cfg.dp_shard * cfg.tp * cfg.cp * cfg.pp
    config = build_model_config(recipe, recipe.model.overrides.get("vocab_size", preset(recipe.model.preset).vocab_size))
    layout = parallel.resolve_layout(cfg, gpus)
    seq_lens = [int(s) for _, s in t.seq_len_schedule] if t.seq_len_schedule else [t.seq_len]
    parallel.validate(cfg, layout, config, seq_lens=seq_lens)
    final_tokens = t.batch_ramp[-1][1] if t.batch_ramp else None
    seq_len = seq_lens[-1]
    batch_size = int(final_tokens) // seq_len if final_tokens else t.batch_size
    micro = t.micro_batch_size or max(1, batch_size // layout.dp)
    _, per_run = parallel.check_batch(batch_size, micro, cfg, layout)
    print(render(recipe.name or args.recipe, config, layout, cfg, seq_lens, micro, per_run, args.gpu_memory,
                 t.loss_chunk_tokens, t.float8))
    return 0

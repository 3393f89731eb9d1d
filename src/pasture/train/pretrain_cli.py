"""`pasture pretrain` and `pasture generate`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    _register_pretrain(sub)
    _register_generate(sub)


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped in pasture/recipes, read without importing torch."""
    from importlib.resources import files

    def by_size(name: str) -> tuple[float, str]:
        size = re.match(r"(\d+)([mb])", name)
        return (int(size[1]) * (1e-3 if size[2] == "m" else 1), name) if size else (0.0, name)

    return sorted((f.name[:-5] for f in files("pasture").joinpath("recipes").iterdir() if f.name.endswith(".toml")),
                  key=by_size)


def _register_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="pre-train a Llama model from a TOML recipe",
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
    from pasture.train.pretrain import pretrain
    from pasture.train.recipe import load_recipe, parse_recipe

    raw = load_recipe(args.recipe, args.overrides)
    summary = pretrain(parse_recipe(raw), raw)
    line = f"done: {summary['steps']} steps, {summary['tokens_seen']:,} tokens, final loss {summary['final_loss']:.4f}"
    if "val_bpb" in summary:
        line += f", val loss {summary['val_loss']:.4f}, val bits/byte {summary['val_bpb']:.4f}"
    print(line + f"; run folder {summary['run_dir']}")
    return 0


def _register_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="sample text from a checkpoint",
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


def find_tokenizer(checkpoint: Path, explicit: str | None) -> str:
    """The tokenizer beside a model: explicit, in the folder, or in the run folder holding it."""
    from pasture.errors import PastureError

    if explicit:
        return explicit
    for folder in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if (folder / "tokenizer.model").is_file():
            return str(folder / "tokenizer.model")
    raise PastureError(f"no tokenizer.model found with {checkpoint}; pass --tokenizer PATH (or `llama3`)")


def _generate(args: argparse.Namespace) -> int:
    from pasture.model import load
    from pasture.tokenizer import Tokenizer, resolve_tokenizer_path
    from pasture.train.generate import SamplingParams, generate
    from pasture.runtime import resolve_device

    device = resolve_device(args.device)
    model, _ = load(args.checkpoint, device=device)
    model.eval()
    tokenizer = Tokenizer.load(resolve_tokenizer_path(find_tokenizer(Path(args.checkpoint), args.tokenizer)))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    stop = set(args.stop) if args.stop is not None else set(tokenizer.stop_tokens)
    ids = generate(model, tokenizer.encode(args.prompt, bos=True), params, stop, use_cache=not args.no_cache)
    print(args.prompt + tokenizer.decode(ids))
    return 0

"""`pasture pretrain`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    _register_pretrain(sub)


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


def find_tokenizer(checkpoint: Path, explicit: str | None) -> str:
    """The tokenizer beside a model: explicit, in the folder, or in the run folder holding it."""
    from pasture.errors import PastureError

    if explicit:
        return explicit
    for folder in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if (folder / "tokenizer.model").is_file():
            return str(folder / "tokenizer.model")
    raise PastureError(f"no tokenizer.model found with {checkpoint}; pass --tokenizer PATH (or `llama3`)")

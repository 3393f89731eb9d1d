"""`pasture <command> ...`: parses arguments and calls one stage function.

Each command lives in its stage's `cli` module, which defines `register(subparsers)`.
Those modules import torch and other heavy libraries only inside their handlers,
so `pasture --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pasture import __version__
from pasture.errors import PastureError

# command modules, in the order `--help` lists them
COMMAND_MODULES = [
    "pasture.speedrun_cli",
    "pasture.data.cli",
    "pasture.tokenizer.cli",
    "pasture.train.cli",
    "pasture.train.pretrain_cli",
    "pasture.train.parallel_cli",
    "pasture.model_cli",
    "pasture.post.cli",
    "pasture.serve.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pasture",
        description="Grow Llama-family language models end to end: curate web data, train a "
        "tokenizer, pre-train, convert checkpoints, and sample.",
    )
    parser.add_argument("--version", action="version", version=f"pasture {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides"):  # `key=value` overrides may follow a command's options too
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        result = args.func(args)
    except PastureError as e:
        print(f"pasture: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"pasture: error: {e.filename or e}: no such file or directory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pasture: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

"""`pasture <command> ...`: the one table of commands.

Each stage package owns its CLI module, which defines `register(subparsers)` for its
commands. `pasture --help` lists this table without importing those modules (they load
torch); a command's module is imported only when that command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pasture import __version__
from pasture.errors import PastureError

# command: (its package's CLI module, one line for `pasture --help`), in the order --help lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "speedrun": ("pasture.speedrun_cli", "the whole pipeline end to end: gather, curate, tokenizer, tokenize, "
                 "pre-train, evaluate, sample, report"),
    "report": ("pasture.report.cli", "write the report card of a speedrun or pre-training run folder"),
    "curate": ("pasture.data.cli", "curate web data: extract, de-duplicate (URL, MinHash, line), filter, mix"),
    "tokenizer": ("pasture.tokenizer.cli", "train a BPE tokenizer; encode, decode and measure text"),
    "tokenize": ("pasture.train.cli", "turn documents into token shards for pre-training"),
    "pretrain": ("pasture.train.cli", "pre-train a Llama model from a TOML recipe"),
    "generate": ("pasture.serve.cli", "sample text from a checkpoint through the serving engine"),
    "serve": ("pasture.serve.cli", "serve a model over an OpenAI-compatible HTTP API, with a web chat page"),
    "chat": ("pasture.serve.cli", "chat with a model in the terminal"),
    "plan": ("pasture.train.cli", "check that a pre-training recipe's parallel layout fits before launching it"),
    "model": ("pasture.model.cli", "inspect model presets and checkpoints"),
    "convert": ("pasture.model.cli", "convert checkpoints between pasture, Hugging Face, Meta and GGUF layouts"),
    "eval": ("pasture.eval.cli", "evaluate a model on benchmarks (ARC, HellaSwag, MMLU, GSM8K, HumanEval, ...)"),
    "scaling": ("pasture.scaling.cli", "scaling laws: IsoFLOP sweeps, Chinchilla fits (approaches 2 and 3), forecasts"),
    "sft": ("pasture.post.cli", "supervised fine-tuning on chat data, loss on assistant turns only"),
    "reward": ("pasture.post.cli", "train a reward model (scalar head, Bradley-Terry) on preference pairs"),
    "rejection-sample": ("pasture.post.cli", "sample K replies per prompt, keep the reward model's best (and pairs)"),
    "dpo": ("pasture.post.cli", "direct preference optimization against a frozen reference"),
    "average": ("pasture.post.cli", "average the weights of models of one architecture (a model soup)"),
    "clean-sft": ("pasture.post.cli", "clean chat data: rules, reward-model quality, semantic de-duplication"),
    "quality-gate": ("pasture.post.cli", "check a quantized model against the original: held-out perplexity and "
                     "reward-score distributions"),
    "rounds": ("pasture.post.cli", "post-training rounds: reward model, rejection sampling, SFT, DPO, averaging"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with `command`'s module registered and every other command listed by name."""
    parser = argparse.ArgumentParser(
        prog="pasture",
        description="Grow Llama-family language models end to end: curate web data, train a "
        "tokenizer, pre-train, convert checkpoints, and sample.",
    )
    parser.add_argument("--version", action="version", version=f"pasture {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if command in COMMANDS:
        # imported here, not at the top: only the command that runs loads its module (and torch)
        importlib.import_module(COMMANDS[command][0]).register(sub)
    for name, (_, line) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=line)
    return parser


def _command(argv: list[str]) -> str | None:
    """The command word of `argv` (its first argument that is not an option)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command(argv))
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

"""The model package's commands: `pasture model info` and `pasture convert`."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pasture.model.config import PRESETS, preset
from pasture.model.convert import CheckpointError, write_checkpoint
from pasture.model.info import describe
from pasture.train.checkpoint import read_weights


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", description="Inspect model presets and checkpoints.")
    model_sub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    info = model_sub.add_parser(
        "info", help="parameters, FLOPs per token and memory of a preset or checkpoint",
        description="Print a model's dimensions, parameter count, training FLOPs per token at a "
        "sequence length, and memory for weights, gradients and optimizer state. Presets are "
        "built on the meta device, so even llama3.1-405b is inspected instantly.",
    )
    info.add_argument("model", help="a preset (tiny, 125m, llama3.2-1b, llama3.2-3b, llama3.1-8b, "
                      "llama3.1-70b, llama3.1-405b) or a checkpoint folder")
    info.add_argument("--seq-len", type=int, default=8192, help="sequence length for FLOPs (default 8192)")
    info.set_defaults(func=_info)

    convert = sub.add_parser(
        "convert",
        description="Read a checkpoint folder in any supported layout (detected automatically: "
        "pasture config.json + model.safetensors, Hugging Face config.json + *.safetensors, Meta "
        "params.json + consolidated.*.pth, or a pre-training run) and write it in another. "
        "The q/k rotary permutation between Meta and Hugging Face is applied for you.",
    )
    convert.add_argument("src", help="source checkpoint folder")
    convert.add_argument("dst", help="destination folder (created)")
    convert.add_argument("--to", required=True, choices=["pasture", "hf", "meta"], help="output layout")
    convert.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                         help="cast weights (default: keep the source dtype)")
    convert.set_defaults(func=_convert)


def _info(args: argparse.Namespace) -> int:
    if args.model in PRESETS and not Path(args.model).exists():
        config, name = preset(args.model), args.model
    else:
        if not Path(args.model).exists():
            raise CheckpointError(f"{args.model!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint folder")
        _, config = read_weights(args.model)
        name = args.model
    print(describe(config, args.seq_len, name))
    return 0


def _convert(args: argparse.Namespace) -> int:
    state, config = read_weights(args.src)
    if args.dtype:
        state = {k: v.to(getattr(torch, args.dtype)) for k, v in state.items()}
    out = write_checkpoint(state, config, args.dst, args.to)
    print(f"wrote {args.to} checkpoint to {out} ({len(state)} tensors)")
    return 0

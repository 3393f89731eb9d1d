"""The model package's commands: `pasture model info` and `pasture convert`."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pasture.model.config import PRESETS, preset
from pasture.errors import PastureError
from pasture.model.convert import CheckpointError, write_checkpoint
from pasture.model.gguf import write_gguf
from pasture.model.info import describe
from pasture.tokenizer import Tokenizer, TokenizerError, as_hf_tokenizer
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
                      "llama3.1-70b, llama3.1-405b), a checkpoint folder or a .gguf file")
    info.add_argument("--seq-len", type=int, default=8192, help="sequence length for FLOPs (default 8192)")
    info.set_defaults(func=_info)

    convert = sub.add_parser(
        "convert", help="convert checkpoints between pasture, Hugging Face, Meta and GGUF",
        description="Read a checkpoint in any supported layout (detected automatically: pasture "
        "config.json + model.safetensors, Hugging Face config.json + *.safetensors, Meta "
        "params.json + consolidated.*.pth, a pre-training run, or a llama GGUF file, dequantized) "
        "and write it in another. The q/k rotary permutations of Meta and llama.cpp are applied "
        "for you. The tokenizer found with SRC (or --tokenizer) goes along: into the GGUF's "
        "metadata, or as tokenizer.json (hf) / the source's own file (pasture, meta).",
    )
    convert.add_argument("src", help="source checkpoint folder or .gguf file")
    convert.add_argument("dst", help="destination folder (created), or the .gguf file for --to gguf")
    convert.add_argument("--to", required=True, choices=["pasture", "hf", "meta", "gguf"], help="output layout")
    convert.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "q8_0"], default=None,
                         help="cast weights (default: keep the source dtype); q8_0 only for --to gguf, "
                         "whose default is the source dtype too (float32 for a dequantized GGUF)")
    convert.add_argument("--tokenizer", default=None,
                         help="tokenizer to include (tokenizer.model, tokenizer.json, .gguf, a folder, or `llama3`; "
                         "default: the one with SRC)")
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
    if args.dtype == "q8_0" and args.to != "gguf":
        raise PastureError("--dtype q8_0 is a GGUF quantization; use it with --to gguf")
    try:
        tokenizer = Tokenizer.load(args.tokenizer or args.src)
    except TokenizerError as e:
        if args.tokenizer:
            raise
        if args.to == "gguf":
            raise PastureError(f"{e}. A GGUF carries its tokenizer: pass --tokenizer PATH") from None
        tokenizer = None
    state, config = read_weights(args.src)
    if args.to == "gguf":
        dtype = args.dtype or str(next(iter(state.values())).dtype).removeprefix("torch.")
        out = write_gguf(state, config, args.dst, dtype=dtype, tokenizer_fields=as_hf_tokenizer(tokenizer).gguf_fields(),
                         name=Path(args.src).stem)
        print(f"wrote {dtype} GGUF to {out} ({len(state)} tensors, tokenizer {tokenizer.name})")
        return 0
    if args.dtype:
        state = {k: v.to(getattr(torch, args.dtype)) for k, v in state.items()}
    out = write_checkpoint(state, config, args.dst, args.to,
                           bos_eos=(tokenizer.bos_id, tokenizer.eos_id) if tokenizer is not None else None)
    note = "no tokenizer found with SRC"
    if tokenizer is not None:
        _save_tokenizer(tokenizer, out, args.to)
        note = f"tokenizer {tokenizer.name}"
    print(f"wrote {args.to} checkpoint to {out} ({len(state)} tensors, {note})")
    return 0


def _save_tokenizer(tokenizer, folder, fmt: str) -> None:
    """The tokenizer beside converted weights: tokenizer.json for Hugging Face, else the source's own form."""
    from pasture.tokenizer import HFTokenizer, as_hf_tokenizer, write_bpe_ranks

    if fmt == "hf" or isinstance(tokenizer, HFTokenizer):
        as_hf_tokenizer(tokenizer).save(folder)
    else:
        ranks = sorted(tokenizer.mergeable_ranks, key=tokenizer.mergeable_ranks.get)
        write_bpe_ranks(ranks, folder / "tokenizer.model")

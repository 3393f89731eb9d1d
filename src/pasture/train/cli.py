"""Pre-training commands: `pasture tokenize` (more join it here, one function each)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    _register_tokenize(sub)


def _register_tokenize(sub: argparse._SubParsersAction) -> None:
    tokenize = sub.add_parser(
        "tokenize", help="turn documents into token shards for pre-training",
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
    from pasture.train.tokenize import DEFAULT_SHARD_TOKENS, tokenize_documents

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

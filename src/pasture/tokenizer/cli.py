"""`pasture tokenizer train|encode|decode|stats`."""

from __future__ import annotations

import argparse
import json
import sys

from pasture.cli_args import byte_size
from pasture.documents import iter_documents
from pasture.tokenizer.tokenizer import LLAMA3_SPEC, Tokenizer, TokenizerError
from pasture.tokenizer.train import measure_compression, train_tokenizer

TOKENIZER_HELP = "a tokenizer.model file, a folder holding one, or 'llama3' for Meta's (from llama-models)"


def register(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser("tokenizer", description="Train a BPE tokenizer; encode, decode and measure text.")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)

    train = tok_sub.add_parser(
        "train",
        help="train a byte-level BPE (Llama 3 regex) and write a tiktoken tokenizer.model",
        description="Learn BPE merges with Hugging Face tokenizers on documents (JSONL, Parquet or "
        "text files and folders), write DIR/tokenizer.model in the tiktoken format Llama 3 uses "
        "(256 special tokens follow the base ranks) and DIR/tokenizer_stats.json with statistics, "
        "including compression on held-out documents.",
    )
    train.add_argument("--input", nargs="+", required=True, metavar="DOCS", help="documents files, folders or globs")
    train.add_argument("--vocab-size", type=int, required=True, help="number of base ranks (bytes + merges)")
    train.add_argument("--out", required=True, metavar="DIR", help="output folder")
    train.add_argument("--max-bytes", type=byte_size, default=None, help="cap on training text, e.g. 100M or 2G")
    train.add_argument("--holdout-fraction", type=float, default=0.01, help="documents held out (default 0.01)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    encode = tok_sub.add_parser("encode", help="print the token ids of text")
    encode.add_argument("text", nargs="?", help="text to encode (or use --file)")
    encode.add_argument("--file", help="encode this file's contents instead")
    encode.add_argument("--tokenizer", default=LLAMA3_SPEC, help=TOKENIZER_HELP + " (default llama3)")
    encode.add_argument("--bos", action="store_true", help="prepend <|begin_of_text|>")
    encode.add_argument("--eos", action="store_true", help="append <|end_of_text|>")
    encode.add_argument(
        "--allow-special", action="store_true", help="encode special-token strings as special tokens"
    )
    encode.add_argument("--json", action="store_true", help="print a JSON list instead of space-separated ids")
    encode.set_defaults(func=_encode)

    decode = tok_sub.add_parser("decode", help="print the text of token ids")
    decode.add_argument("ids", nargs="+", help="token ids (space or comma separated, or a JSON list)")
    decode.add_argument("--tokenizer", default=LLAMA3_SPEC, help=TOKENIZER_HELP + " (default llama3)")
    decode.set_defaults(func=_decode)

    stats = tok_sub.add_parser("stats", help="documents, characters, tokens and compression of documents")
    stats.add_argument("--input", nargs="+", required=True, metavar="DOCS", help="documents files, folders or globs")
    stats.add_argument("--tokenizer", default=LLAMA3_SPEC, help=TOKENIZER_HELP + " (default llama3)")
    stats.add_argument("--json", action="store_true", help="print the numbers as JSON")
    stats.set_defaults(func=_stats)


def _train(args: argparse.Namespace) -> int:
    stats = train_tokenizer(
        args.input,
        args.vocab_size,
        args.out,
        max_bytes=args.max_bytes,
        holdout_fraction=args.holdout_fraction,
        show_progress=not args.quiet,
    )
    heldout = stats["heldout"]
    print(
        f"wrote {args.out}/tokenizer.model: {stats['num_base_tokens']} ranks + {stats['num_special_tokens']} "
        f"special tokens, trained on {stats['train']['docs']} docs ({stats['train']['bytes']:,} bytes) "
        f"in {stats['seconds']:.1f}s"
    )
    if heldout:
        print(
            f"held-out {heldout['docs']} docs: {heldout['chars_per_token']:.3f} chars/token, "
            f"{heldout['bytes_per_token']:.3f} bytes/token"
        )
    if "note" in stats:
        print(f"note: {stats['note']}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.file is None):
        raise TokenizerError("give the text to encode either as an argument or with --file, not both")
    if args.file is not None:
        with open(args.file, encoding="utf-8", errors="replace") as f:
            text = f.read()
    else:
        text = args.text
    tokenizer = Tokenizer.load(args.tokenizer)
    allowed = "all" if args.allow_special else frozenset()
    ids = tokenizer.encode(text, bos=args.bos, eos=args.eos, allowed_special=allowed)
    print(json.dumps(ids) if args.json else " ".join(map(str, ids)))
    return 0


def _parse_ids(values: list[str]) -> list[int]:
    text = " ".join(values).strip()
    if text.startswith("["):
        try:
            ids = json.loads(text)
        except json.JSONDecodeError:
            raise TokenizerError(f"token ids {text[:60]!r} are not a JSON list") from None
        if not all(isinstance(i, int) for i in ids):
            raise TokenizerError("token ids must be integers")
        return ids
    ids = []
    for word in text.replace(",", " ").split():
        try:
            ids.append(int(word))
        except ValueError:
            raise TokenizerError(f"token id {word!r} is not an integer") from None
    return ids


def _decode(args: argparse.Namespace) -> int:
    ids = _parse_ids(args.ids)
    tokenizer = Tokenizer.load(args.tokenizer)
    sys.stdout.write(tokenizer.decode(ids) + "\n")
    return 0


def _stats(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer.load(args.tokenizer)
    stats = measure_compression(tokenizer, (doc.text for doc in iter_documents(args.input)))
    if args.json:
        print(json.dumps(stats))
    elif stats["tokens"]:
        print(
            f"docs {stats['docs']:,}  chars {stats['chars']:,}  bytes {stats['bytes']:,}  tokens {stats['tokens']:,}  "
            f"chars/token {stats['chars_per_token']:.3f}  bytes/token {stats['bytes_per_token']:.3f}"
        )
    else:
        print(f"docs {stats['docs']:,}  no text")
    return 0

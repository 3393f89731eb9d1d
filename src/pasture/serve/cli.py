"""`pasture generate`: sample from a checkpoint through the engine."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="sample text from a checkpoint",
        description="Sample a continuation with the serving engine (KV cache, per-request sampling). "
        "CKPT is a run folder (its newest valid checkpoint), a checkpoint folder, or a pasture / "
        "Hugging Face / Meta model folder.",
    )
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--prompt", required=True, help="text to continue (a <|begin_of_text|> is prepended)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.model path or `llama3` (default: the one in the run or model folder)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.6, help="0 for greedy")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=0, help="0 is off")
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", type=int, nargs="*", default=None,
                   help="stop token ids (default: the tokenizer's end-of-text, end-of-turn, end-of-message)")
    p.add_argument("--stop-string", action="append", default=[], help="stop at this text (repeatable)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    from pasture.errors import PastureError
    from pasture.model import load
    from pasture.serve import Engine, SamplingParams
    from pasture.tokenizer import Tokenizer, resolve_tokenizer_path
    from pasture.train.pretrain import resolve_device
    from pasture.train.pretrain_cli import find_tokenizer

    device = resolve_device(args.device)
    model, _ = load(args.checkpoint, device=device)
    tokenizer = Tokenizer.load(resolve_tokenizer_path(find_tokenizer(Path(args.checkpoint), args.tokenizer)))
    try:
        params = SamplingParams(
            max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
            stop=tuple(args.stop_string),
        )
    except ValueError as e:
        raise PastureError(str(e)) from None
    stop = args.stop if args.stop is not None else tokenizer.stop_tokens
    with Engine(model, tokenizer, max_batch_size=1, stop_token_ids=stop) as engine:
        handle = engine.submit(args.prompt, params)
        print(args.prompt, end="", flush=True)
        for event in handle:
            print(event.text, end="", flush=True)
        print()
        handle.result()
    return 0

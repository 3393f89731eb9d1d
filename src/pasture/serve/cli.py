"""`pasture generate`, `pasture serve` and `pasture chat`: the engine from the command line."""

from __future__ import annotations

import argparse

from pasture import runs
from pasture.errors import PastureError
from pasture.runtime import resolve_device
import uvicorn

from pasture.serve import Engine, SamplingParams
from pasture.serve.chat import TerminalChat
from pasture.serve.served import load_served
from pasture.serve.server import ServerLimits, build_app
from pasture.tokenizer import Tokenizer


def register(sub: argparse._SubParsersAction) -> None:
    model_help = ("a run folder (its final model), a checkpoint, a pasture / Hugging Face / Meta model folder, "
                  "or a GGUF file")
    p = sub.add_parser(
        "generate",
        description="Sample a continuation with the serving engine (KV cache, per-request sampling). "
        "CKPT is a run folder (its newest valid checkpoint), a checkpoint folder, a pasture / "
        "Hugging Face / Meta model folder, or a GGUF file.",
    )
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--prompt", required=True,
                   help="text to continue (the tokenizer's begin-of-text token is prepended where it uses one)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.model, tokenizer.json, a .gguf or a folder holding one, or `llama3` "
                        "(default: the one with CKPT)")
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

    s = sub.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API, with a web chat page",
        description="Serve MODEL at http://HOST:PORT: /v1/models, /v1/completions, /v1/chat/completions "
        "(streaming with server-sent events, tool calls), /health, /metrics (Prometheus) and a chat page at /. "
        "Requests are batched continuously by the engine; beyond --max-batch-size running and --max-queue "
        "waiting requests the server answers 429.",
    )
    s.add_argument("model", metavar="MODEL", help=model_help)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1 requests")
    s.add_argument("--name", default=None, help="model name clients send (default: MODEL's folder or file name)")
    _engine_options(s)
    s.add_argument("--max-queue", type=int, default=64, help="requests allowed to wait for a batch row")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20)
    s.set_defaults(func=_serve)

    c = sub.add_parser(
        "chat", help="chat with a model in the terminal",
        description="A terminal chat with MODEL: history, a system prompt, streamed replies. Type /reset to "
        "start over, /save FILE to write the conversation as SFT JSON, /system TEXT, /quit.",
    )
    c.add_argument("model", metavar="MODEL", help=model_help)
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--temperature", type=float, default=0.6, help="0 for greedy")
    c.add_argument("--top-p", type=float, default=0.9)
    c.add_argument("--max-tokens", type=int, default=512, help="longest reply")
    c.add_argument("--seed", type=int, default=None)
    _engine_options(c)
    c.set_defaults(func=_chat)


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default=None, help="tokenizer file or folder (default: the model's own)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--quantize", choices=("none", "int8", "fp8"), default="none",
                   help="int8 weight-only (CPU decode) or Llama 3's FP8 FFN recipe (CUDA)")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together")
    p.add_argument("--max-seq-len", type=int, default=None, help="positions per request (default: up to 4096)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the decode step (default: on CUDA only; on CPU it speeds up decode, "
                   "the first requests wait for compilation, and with --max-batch-size above 1 the linear "
                   "weights are held twice: row dot products for one row, oneDNN for more)")


def _load(args: argparse.Namespace):
    return load_served(args.model, tokenizer=args.tokenizer, device=args.device, quantize=args.quantize,
                       max_batch_size=args.max_batch_size, max_seq_len=args.max_seq_len, compile=args.compile)


def _serve(args: argparse.Namespace) -> int:
    served = _load(args)
    name = args.name or served.name
    app = build_app(served.engine, name, served.encode_chat,
                    ServerLimits(max_queue=args.max_queue, request_timeout_s=args.timeout,
                                 max_body_bytes=args.max_body_bytes), api_key=args.api_key)
    print(f"serving {name} at http://{args.host}:{args.port} (chat page at /, API at /v1)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        served.engine.close()
    return 0


def _chat(args: argparse.Namespace) -> int:
    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                seed=args.seed)
    except ValueError as e:
        raise PastureError(str(e)) from None
    served = _load(args)
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    with served.engine:
        TerminalChat(served, params, system=args.system).loop()
    return 0


def _generate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model, _ = runs.load(args.checkpoint, device=device)
    tokenizer = Tokenizer.load(args.tokenizer or args.checkpoint)
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

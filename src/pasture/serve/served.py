"""A model ready to serve: the engine over it, its name, and how chats become prompts.

`pasture serve` and `pasture chat` both start here, so a model folder, a GGUF file or
a training run is read one way for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pasture.errors import PastureError
from pasture import runs
from pasture.serve.engine import Engine
from pasture.serve.protocol import Tool
from pasture.serve.quantize import pack_for_cpu, rows_for_compiled_cpu
from pasture.serve.quantize import quantize as quantize_model
from pasture.serve.tool_calls import tools_prompt
from pasture.tokenizer import Tokenizer
from pasture.tokenizer.chat_format import ChatFormat, ChatFormatError
from pasture.tokenizer.chat_template import ChatTemplate, chat_format_for
from pasture.runtime import resolve_device

QUANTIZATIONS = ("none", "int8", "fp8")

ChatEncoder = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], list[int]]


@dataclass
class ServedModel:
    engine: Engine
    name: str
    encode_chat: ChatEncoder


def llama3_chat_encoder(chat_format: ChatFormat) -> ChatEncoder:
    """Llama 3.1 dialogs; request tools go before the first user message (zero-shot custom tools)."""

    def encode(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        if tools:
            preamble = tools_prompt([Tool.model_validate(t) for t in tools])
            first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
            if first_user is None:
                raise ValueError("a request with tools needs a user message")
            messages = [*messages]
            messages[first_user] = {**messages[first_user], "content": preamble + messages[first_user]["content"]}
        try:
            return chat_format.encode_dialog_prompt(messages, add_generation_prompt=True).tokens
        except ChatFormatError as e:
            raise ValueError(str(e)) from None

    return encode


def template_chat_encoder(template: ChatTemplate) -> ChatEncoder:
    """A model's own Jinja template; request tools reach it as transformers passes them (`tools`)."""

    def encode(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        context = {"tools": tools} if tools else {}
        try:
            return template.encode_dialog_prompt(messages, add_generation_prompt=True, **context).tokens
        except ChatFormatError as e:
            raise ValueError(str(e)) from None

    return encode


def chat_encoder(tokenizer: Tokenizer) -> ChatEncoder:
    chat = chat_format_for(tokenizer)
    return llama3_chat_encoder(chat) if isinstance(chat, ChatFormat) else template_chat_encoder(chat)


def load_served(path: str, *, tokenizer: str | None = None, device: str = "auto", quantize: str = "none",
                max_batch_size: int = 8, max_seq_len: int | None = None, compile: bool | None = None) -> ServedModel:
    """Model, tokenizer, chat encoder and engine for `pasture serve` / `pasture chat`.

    PATH is a run folder, a checkpoint, a pasture / Hugging Face / Meta folder, or a GGUF
    file. On CUDA the weights are bf16; on CPU fp32, packed for oneDNN at `max_batch_size`
    rows (when above 1: oneDNN is slower than MKL for one row at a time), or with `compile`
    also as row dot products in a compiled decode step (faster at batch 1; the first
    requests wait for compilation; with `max_batch_size` above 1 the linear weights are held
    twice). `compile` defaults to on for CUDA, off for CPU. `quantize` is int8
    (weight-only, CPU) or fp8 (Llama 3's FFN recipe, CUDA).
    """
    if quantize not in QUANTIZATIONS:
        raise PastureError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    torch_device = resolve_device(device)
    dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
    model, _ = runs.load(path, device=torch_device, dtype=dtype)
    tok = Tokenizer.load(tokenizer or path)
    if quantize != "none":
        model = quantize_model(model, quantize)
    elif torch_device.type == "cpu" and compile:
        model = rows_for_compiled_cpu(model, batch_hint=max_batch_size)
    elif torch_device.type == "cpu" and max_batch_size > 1:  # one row at a time, MKL's GEMV is faster
        model = pack_for_cpu(model, batch_hint=max_batch_size)
    engine = Engine(model.eval(), tok, max_batch_size=max_batch_size, max_seq_len=max_seq_len, compile=compile)
    return ServedModel(engine, model_name(path), chat_encoder(tok))


def model_name(path: str) -> str:
    """The name clients send as `model`: the folder or file name without its suffix."""
    p = Path(path.rstrip("/"))
    return p.stem if p.suffix == ".gguf" else p.name

"""A model ready to serve: the engine over it, its name, and how chats become prompts.

`pasture serve` and `pasture chat` both start here, so a model folder, a GGUF file or
a training run is read one way for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pasture.serve.engine import Engine
from pasture.serve.protocol import Tool
from pasture.serve.tool_calls import tools_prompt
from pasture.tokenizer.chat_format import ChatFormat, ChatFormatError

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


def model_name(path: str) -> str:
    """The name clients send as `model`: the folder or file name without its suffix."""
    p = Path(path.rstrip("/"))
    return p.stem if p.suffix == ".gguf" else p.name

"""Llama 3.1 dialog encoding, with the loss mask SFT needs.

A dialog is `<|begin_of_text|>`, then each message as

    <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}{terminator}

and, for generation, an open `<|start_header_id|>assistant<|end_header_id|>\\n\\n`.
Token ids equal those of Meta's `llama_models.llama3.chat_format.ChatFormat`
(llama-models 0.3.0) for the equivalent messages, including its details:

- content is not stripped; header role, "\\n\\n", content and each tool call are
  tokenized separately (so token boundaries never cross them);
- role `tool` is written as `ipython` (the tool-result role);
- an assistant message whose first tool call is `code_interpreter` starts with
  `<|python_tag|>`; other tool calls are rendered after the content without it
  (`brave_search.call(query="...")`, or JSON / function tag / python list for
  custom tools);
- the terminator is `<|eom_id|>` for an assistant message with stop_reason
  `end_of_message` ("expecting a tool result"), else `<|eot_id|>`.

One addition: an assistant message with tool calls and no stop_reason ends with
`<|eom_id|>`, since a tool call always waits for its result.

Messages are `Message` objects or plain dicts of the same shape:

    {"role": "system" | "user" | "assistant" | "ipython" | "tool",
     "content": "text" (or a list of text parts),
     "tool_calls": [{"tool_name": "brave_search", "arguments": {"query": "..."}}, ...],
     "stop_reason": "end_of_turn" | "end_of_message" | "out_of_tokens"}

A tool call may also be OpenAI-shaped: `{"function": {"name": ..., "arguments": "<json>"}}`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pasture.errors import PastureError
from pasture.tokenizer.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant", "ipython", "tool")
STOP_REASONS = ("end_of_turn", "end_of_message", "out_of_tokens")
TOOL_PROMPT_FORMATS = ("json", "function_tag", "python_list")
QUERY_TOOLS = ("brave_search", "wolfram_alpha", "photogen")  # built-ins called as NAME.call(query="...")
CODE_INTERPRETER = "code_interpreter"


class ChatFormatError(PastureError):
    """A message that cannot be encoded: unknown role, malformed tool call."""


@dataclass
class ToolCall:
    """One tool call made by the assistant; `arguments` are the call's keyword arguments."""

    tool_name: str
    arguments: dict[str, Any]
    call_id: str = ""

    @classmethod
    def from_value(cls, value: "ToolCall | Mapping[str, Any]") -> "ToolCall":
        if isinstance(value, ToolCall):
            return value
        if not isinstance(value, Mapping):
            raise ChatFormatError(f"a tool call must be a dict, got {type(value).__name__}")
        function = value.get("function")
        if isinstance(function, Mapping):  # OpenAI shape
            name, arguments = function.get("name"), function.get("arguments", {})
        else:
            name, arguments = value.get("tool_name", value.get("name")), value.get("arguments", {})
        if not isinstance(name, str) or not name:
            raise ChatFormatError(f"tool call without a name: {dict(value)!r}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                raise ChatFormatError(f"tool call {name}: arguments are not JSON: {arguments[:80]!r}") from None
        if not isinstance(arguments, Mapping):
            raise ChatFormatError(f"tool call {name}: arguments must be an object, got {type(arguments).__name__}")
        return cls(tool_name=name, arguments=dict(arguments), call_id=str(value.get("call_id", value.get("id", ""))))


@dataclass
class Message:
    """One dialog message (see the module docstring for the dict form)."""

    role: str
    content: str | list[Any] = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    stop_reason: str | None = None

    @classmethod
    def from_value(cls, value: "Message | Mapping[str, Any]") -> "Message":
        if isinstance(value, Message):
            message = value
        elif isinstance(value, Mapping):
            message = cls(
                role=value.get("role", ""),
                content=value.get("content") or "",
                tool_calls=[ToolCall.from_value(t) for t in value.get("tool_calls") or []],
                stop_reason=value.get("stop_reason"),
            )
        else:
            raise ChatFormatError(f"a message must be a dict or Message, got {type(value).__name__}")
        if message.role not in ROLES:
            raise ChatFormatError(f"unknown role {message.role!r}; expected one of {', '.join(ROLES)}")
        if message.stop_reason is not None and message.stop_reason not in STOP_REASONS:
            raise ChatFormatError(
                f"unknown stop_reason {message.stop_reason!r}; expected one of {', '.join(STOP_REASONS)}"
            )
        return message

    def text_parts(self) -> list[str]:
        """The content as the list of strings Meta tokenizes one by one."""
        if isinstance(self.content, str):
            return [self.content]
        parts = []
        for part in self.content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise ChatFormatError(f"{self.role} message: only text content is supported, got {part!r:.80}")
        return parts


@dataclass
class EncodedChat:
    """Token ids and, per token, whether SFT trains on it (assistant content and terminator)."""

    tokens: list[int]
    loss_mask: list[bool]

    def extend(self, other: "EncodedChat") -> None:
        self.tokens.extend(other.tokens)
        self.loss_mask.extend(other.loss_mask)


def _python_literal(value: Any) -> str:
    """A JSON-like value written the way Llama 3.2's pythonic tool-call format writes it."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (bool, int, float)) or value is None:
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_python_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}={_python_literal(v)}" for k, v in value.items()) + "}"
    raise ChatFormatError(f"tool call argument of type {type(value).__name__} cannot be written as a python literal")


def render_tool_call(call: ToolCall, tool_prompt_format: str = "json") -> str:
    """The text of a tool call as the assistant writes it."""
    if call.tool_name in QUERY_TOOLS:
        if "query" not in call.arguments:
            raise ChatFormatError(f"tool call {call.tool_name} needs a 'query' argument")
        return f'{call.tool_name}.call(query="{call.arguments["query"]}")'
    if call.tool_name == CODE_INTERPRETER:
        if "code" not in call.arguments:
            raise ChatFormatError("tool call code_interpreter needs a 'code' argument")
        return str(call.arguments["code"])
    if tool_prompt_format == "json":
        return json.dumps({"type": "function", "name": call.tool_name, "parameters": call.arguments})
    if tool_prompt_format == "function_tag":
        return f"<function={call.tool_name}>{json.dumps(call.arguments)}</function>"
    if tool_prompt_format == "python_list":
        arguments = ", ".join(f"{k}={_python_literal(v)}" for k, v in call.arguments.items())
        return f"[{call.tool_name}({arguments})]"
    raise ChatFormatError(f"unknown tool prompt format {tool_prompt_format!r}; expected one of {TOOL_PROMPT_FORMATS}")


class ChatFormat:
    """Encodes Llama 3.1 dialogs with a `Tokenizer` (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer, tool_prompt_format: str = "json") -> None:
        if tool_prompt_format not in TOOL_PROMPT_FORMATS:
            raise ChatFormatError(
                f"unknown tool prompt format {tool_prompt_format!r}; expected one of {TOOL_PROMPT_FORMATS}"
            )
        self.tokenizer = tokenizer
        self.tool_prompt_format = tool_prompt_format

    def encode_header(self, role: str) -> list[int]:
        """`<|start_header_id|>{role}<|end_header_id|>\\n\\n`, with `tool` written as `ipython`."""
        tok = self.tokenizer
        header_role = "ipython" if role == "tool" else role
        return [tok.start_header_id, *tok.encode(header_role), tok.end_header_id, *tok.encode("\n\n")]

    def encode_message(self, message: Message | Mapping[str, Any]) -> EncodedChat:
        """Header, content, tool calls and terminator of one message; the mask marks the
        assistant's own tokens (everything after its header)."""
        message = Message.from_value(message)
        tok = self.tokenizer
        body: list[int] = []
        is_assistant = message.role == "assistant"
        tool_calls = message.tool_calls if is_assistant else []
        if tool_calls and tool_calls[0].tool_name == CODE_INTERPRETER:
            body.append(tok.python_tag_id)
        for part in message.text_parts():
            body.extend(tok.encode(part))
        for call in tool_calls:
            body.extend(tok.encode(render_tool_call(call, self.tool_prompt_format)))
        stop_reason = message.stop_reason
        if stop_reason is None and tool_calls:
            stop_reason = "end_of_message"
        body.append(tok.eom_id if is_assistant and stop_reason == "end_of_message" else tok.eot_id)
        header = self.encode_header(message.role)
        return EncodedChat(tokens=header + body, loss_mask=[False] * len(header) + [is_assistant] * len(body))

    def encode_dialog_prompt(
        self, messages: Iterable[Message | Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> EncodedChat:
        """`<|begin_of_text|>` + every message (+ the open assistant header to generate from).

        For SFT pass `add_generation_prompt=False`: the dialog ends with the last
        assistant message's terminator, and the loss mask covers each assistant reply.
        """
        encoded = EncodedChat(tokens=[self.tokenizer.bos_id], loss_mask=[False])
        for message in messages:
            encoded.extend(self.encode_message(message))
        if add_generation_prompt:
            header = self.encode_header("assistant")
            encoded.extend(EncodedChat(tokens=header, loss_mask=[False] * len(header)))
        return encoded

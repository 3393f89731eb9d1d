"""A model's own Jinja chat template, rendered as transformers renders it, and the choice of
chat encoder for a tokenizer.

Rendering follows `transformers`' `apply_chat_template`: a sandboxed, immutable Jinja
environment with `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, a `tojson`
filter that keeps non-ASCII text, `raise_exception` and `strftime_now`, and the special tokens
(`bos_token`, `eos_token`, ...) in the context. The rendered text is encoded with its special
tokens recognised and no BOS added: a template that writes BOS itself gets exactly one (the
double-BOS bug is adding another).

`ChatTemplate.encode_dialog_prompt` returns the same `EncodedChat` as Llama 3's `ChatFormat`:
token ids plus a loss mask over what each assistant message adds after its generation prompt
(its content and end-of-turn markup), found by rendering the dialog's prefixes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pasture.tokenizer.chat_format import ChatFormat, ChatFormatError, EncodedChat, Message
from pasture.tokenizer.tokenizer import Tokenizer


class _GenerationBlocks(Extension):
    """Accepts `{% generation %}...{% endgeneration %}` (transformers' assistant-mask markers) and
    renders the body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlocks, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatFormatError(f"the chat template does not parse: {e}") from None


def _plain_message(message: Message | Mapping[str, Any]) -> dict[str, Any]:
    """A message as templates expect it: a dict with role and content (tool calls kept)."""
    if isinstance(message, Message):
        return {"role": message.role, "content": message.content}
    if not isinstance(message, Mapping):
        raise ChatFormatError(f"a message must be a dict or Message, got {type(message).__name__}")
    if not isinstance(message.get("role"), str):
        raise ChatFormatError(f"a message needs a string 'role': {dict(message)!r:.80}")
    return dict(message)


class ChatTemplate:
    """Encodes dialogs with a model's Jinja chat template (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer, template: str) -> None:
        self.tokenizer = tokenizer
        self.source = template
        self.template = compile_template(template)

    def _special_token_text(self) -> dict[str, str]:
        names = {"bos_token": self.tokenizer.bos_id, "eos_token": self.tokenizer.eos_id,
                 "pad_token": self.tokenizer.pad_id}
        return {name: self.tokenizer.token_bytes(i).decode("utf-8", errors="replace")
                for name, i in names.items() if i is not None}

    def render(self, messages: Iterable[Message | Mapping[str, Any]], add_generation_prompt: bool = True,
               **context: Any) -> str:
        """The dialog as text, exactly as transformers' `apply_chat_template(tokenize=False)` gives it."""
        plain = [_plain_message(m) for m in messages]
        try:
            return self.template.render(messages=plain, add_generation_prompt=add_generation_prompt,
                                        **self._special_token_text(), **context)
        except jinja2.exceptions.TemplateError as e:
            raise ChatFormatError(f"the chat template refused the dialog: {e}") from None

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, allowed_special="all")

    def encode_dialog_prompt(
        self, messages: Iterable[Message | Mapping[str, Any]], add_generation_prompt: bool = True, **context: Any
    ) -> EncodedChat:
        """Token ids of the rendered dialog, and a loss mask over each assistant message's own text."""
        messages = [_plain_message(m) for m in messages]
        text = self.render(messages, add_generation_prompt, **context)
        trained = [False] * len(text)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], True, **context)
            through = self.render(messages[: i + 1], False, **context)
            if not (text.startswith(through) and through.startswith(prompt)):
                raise ChatFormatError(
                    f"the chat template renders message {i} differently inside the dialog; "
                    "its tokens cannot be attributed to it (no loss mask)"
                )
            trained[len(prompt):len(through)] = [True] * (len(through) - len(prompt))
        return self._encode_with_mask(text, trained)

    def _encode_with_mask(self, text: str, trained_chars: list[bool]) -> EncodedChat:
        """Encode `text`; a token is trained on when every byte it covers is."""
        trained_bytes = [flag for char, flag in zip(text, trained_chars) for _ in char.encode("utf-8")]
        tokens = self.encode_text(text)
        loss_mask: list[bool] = []
        position = 0
        for token in tokens:
            width = len(self.tokenizer.token_bytes(token))
            covered = trained_bytes[position:position + width]
            loss_mask.append(bool(covered) and all(covered))
            position += width
        return EncodedChat(tokens=tokens, loss_mask=loss_mask)


def is_llama3_vocabulary(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer has Llama 3's header and end-of-turn special tokens."""
    return all(getattr(tokenizer, name, None) is not None for name in ("start_header_id", "end_header_id", "eot_id")) \
        and "<|start_header_id|>" in tokenizer.special_tokens


def chat_format_for(tokenizer: Tokenizer, template: str | None = None) -> ChatFormat | ChatTemplate:
    """Llama 3's `ChatFormat` for a Llama 3 vocabulary, else the model's own Jinja template
    (`template`, or the one shipped with the tokenizer)."""
    if template is None and is_llama3_vocabulary(tokenizer):
        return ChatFormat(tokenizer)
    template = template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ChatFormatError(f"{getattr(tokenizer, 'name', 'the tokenizer')} has no chat template and is not Llama 3's")
    return ChatTemplate(tokenizer, template)

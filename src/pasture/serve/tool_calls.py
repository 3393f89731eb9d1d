"""Tool calls in and out of the chat endpoint.

In: OpenAI `tools` become Llama 3.1's zero-shot custom-tool prompt (the function
definitions as JSON in the first user message, as Meta's prompt format shows).
Out: the model's reply is read back into OpenAI `tool_calls` when it is a call:
`<|python_tag|>` followed by a built-in call (`brave_search.call(query="...")`), code
for the interpreter, or JSON function calls (`{"name": ..., "parameters": ...}`,
several separated by `;`), or `<function=NAME>{...}</function>`; ChatML models'
`<tool_call>{...}</tool_call>` blocks are read too.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from pasture.serve.protocol import Tool

BUILTIN_CALL = re.compile(r'^\s*(?P<name>\w+)\.call\(query="(?P<query>[^"]*)"\)\s*$', re.S)
FUNCTION_TAG = re.compile(r"<function=(?P<name>[\w.-]+)>(?P<args>.*?)</function>", re.S)
CHATML_CALL = re.compile(r"<tool_call>(?P<body>.*?)</tool_call>", re.S)

CUSTOM_TOOLS_PROMPT = (
    "Given the following functions, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and '
    "its value}. Do not use variables.\n\n"
)


@dataclass
class ParsedReply:
    content: str | None
    tool_calls: list[dict[str, Any]]


def tools_prompt(tools: list[Tool]) -> str:
    """The preamble that goes before the first user message when the request has tools."""
    definitions = "\n".join(json.dumps(tool.model_dump()) for tool in tools)
    return CUSTOM_TOOLS_PROMPT + definitions + "\n\n"


def _openai_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def _json_calls(text: str) -> list[dict[str, Any]] | None:
    """JSON function calls separated by ';', or None when the text is not only calls."""
    calls = []
    for chunk in (c.strip() for c in text.split(";")):
        if not chunk:
            continue
        try:
            value = json.loads(chunk)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return None
        arguments = value.get("parameters", value.get("arguments", {}))
        if not isinstance(arguments, dict):
            return None
        calls.append(_openai_call(value["name"], arguments))
    return calls or None


def parse_reply(text: str, python_tag: bool) -> ParsedReply:
    """Split a finished reply into content and OpenAI tool calls.

    `python_tag` says the reply began with `<|python_tag|>`, which makes everything
    after it a call: a built-in, JSON calls, or else code for the interpreter.
    """
    if python_tag:
        builtin = BUILTIN_CALL.match(text)
        if builtin:
            return ParsedReply(None, [_openai_call(builtin["name"], {"query": builtin["query"]})])
        calls = _json_calls(text)
        if calls:
            return ParsedReply(None, calls)
        return ParsedReply(None, [_openai_call("code_interpreter", {"code": text})])
    tagged = FUNCTION_TAG.findall(text) or [(None, body) for body in CHATML_CALL.findall(text)]
    if tagged:
        calls = []
        for name, body in tagged:
            parsed = _json_calls(body.strip()) if name is None else None
            if parsed:
                calls.extend(parsed)
                continue
            try:
                arguments = json.loads(body) if name is not None else None
            except json.JSONDecodeError:
                arguments = None
            if isinstance(arguments, dict):
                calls.append(_openai_call(name, arguments))
        if calls:
            rest = CHATML_CALL.sub("", FUNCTION_TAG.sub("", text)).strip()
            return ParsedReply(rest or None, calls)
    calls = _json_calls(text.strip())
    if calls:
        return ParsedReply(None, calls)
    return ParsedReply(text, [])

"""Post-training data: SFT conversations and preference records, read with validation.

A bad record is never a crash halfway through a run: it is skipped and counted under
its reason (`no_assistant_turn`, `unknown_role`, `empty_chosen`, `chosen_equals_rejected`,
`too_long`, ...), and only a file with nothing usable left stops the run, with the
counts in the message. Formats are in docs/formats.md ("Post-training data").
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pasture.documents import JSONL_SUFFIXES, PARQUET_SUFFIXES, _open_text, expand_inputs
from pasture.errors import PastureError

ROLES = ("system", "user", "assistant", "ipython", "tool")
RECORD_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES


class PostDataError(PastureError):
    """No usable record, or a file that cannot be read at all."""


class BadRecord(ValueError):
    """One record that is skipped; `reason` is the short name it is counted under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Skipped:
    """Records dropped while reading or encoding, per reason, with one example each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    kept: int = 0

    def add(self, error: BadRecord, where: str) -> None:
        self.counts[error.reason] += 1
        self.examples.setdefault(error.reason, f"{where}: {error}")

    def as_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "skipped": dict(self.counts), "examples": self.examples}

    def describe(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.counts.most_common())
        return f"{self.kept} kept, {sum(self.counts.values())} skipped ({reasons or 'none'})"

    def require_some(self, what: str) -> None:
        """Stop with the counts when nothing usable is left."""
        if self.kept == 0:
            examples = "; ".join(self.examples.values())
            raise PostDataError(f"no usable {what}: {self.describe()}" + (f"; e.g. {examples}" if examples else ""))


def read_records(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[tuple[str, Any]]:
    """Every JSON object of JSONL / Parquet files (paths, folders, globs) as (`file:line`, record).
    A line that is not JSON is yielded as its text, so the caller counts it as bad."""
    for path in expand_inputs(inputs, suffixes=RECORD_SUFFIXES):
        if path.name.lower().endswith(PARQUET_SUFFIXES):
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as e:  # pyarrow raises several types for a bad file
                raise PostDataError(f"{path} is not a readable Parquet file: {e}") from None
            for n, record in enumerate(table.to_pylist()):
                yield f"{path}:{n}", record
            continue
        with _open_text(Path(path)) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{n}", json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"{path}:{n}", f"not JSON ({e.msg})"


def _json_field(value: Any) -> Any:
    """Parquet writers often store nested columns as JSON strings."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        content = "".join(p.get("text", "") if isinstance(p, Mapping) else str(p) for p in content)
    return str(content)


def check_message(message: Any) -> dict[str, Any]:
    """A message as a plain dict, or BadRecord naming what is wrong with it."""
    if not isinstance(message, Mapping):
        raise BadRecord("bad_message", f"a message must be an object, got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise BadRecord("unknown_role", f"role {role!r}; expected one of {', '.join(ROLES)}")
    if not _text(message).strip() and not message.get("tool_calls"):
        raise BadRecord("empty_message", f"a {role} message without content")
    return dict(message)


def _messages(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = _json_field(record.get("messages"))
    if not isinstance(messages, list) or not messages:
        raise BadRecord("no_messages", "'messages' must be a non-empty list")
    return [check_message(m) for m in messages]


def parse_conversation(record: Any) -> list[dict[str, Any]]:
    """The messages of one SFT record; at least one assistant turn."""
    if not isinstance(record, Mapping):
        raise BadRecord("not_an_object", str(record)[:80])
    messages = _messages(record)
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRecord("no_assistant_turn", "SFT needs at least one assistant message")
    return messages


def _response(record: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = _json_field(record.get(key))
    if value is None:
        return None
    if isinstance(value, str):  # a bare string is the assistant's text
        value = {"role": "assistant", "content": value}
    if isinstance(value, Mapping) and "role" not in value:
        value = {"role": "assistant", **value}
    try:
        message = check_message(value)
    except BadRecord as e:
        raise BadRecord(f"empty_{key}" if e.reason == "empty_message" else e.reason, f"{key}: {e}") from None
    if message["role"] != "assistant":
        raise BadRecord("bad_response_role", f"{key} must be an assistant message, got role {message['role']!r}")
    return message


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return _text(a).strip() == _text(b).strip() and (a.get("tool_calls") or []) == (b.get("tool_calls") or [])


@dataclass
class Preference:
    """A prompt and its ranked responses, best first: [edited,] chosen, rejected."""

    prompt: list[dict[str, Any]]
    responses: list[dict[str, Any]]
    scores: list[float] | None = None

    def pairs(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Every (better, worse) pair the ranking implies: edited > chosen > rejected gives three."""
        return [(self.responses[i], self.responses[j])
                for i in range(len(self.responses)) for j in range(i + 1, len(self.responses))]


def parse_preference(record: Any) -> Preference:
    """Prompt turns plus chosen / rejected (and optionally edited) assistant messages."""
    if not isinstance(record, Mapping):
        raise BadRecord("not_an_object", str(record)[:80])
    prompt = _messages(record)
    if prompt[-1]["role"] == "assistant":
        raise BadRecord("prompt_ends_with_assistant", "the prompt turns must end before the response")
    chosen, rejected = _response(record, "chosen"), _response(record, "rejected")
    if chosen is None:
        raise BadRecord("empty_chosen", "no chosen response")
    if rejected is None:
        raise BadRecord("empty_rejected", "no rejected response")
    if _same(chosen, rejected):
        raise BadRecord("chosen_equals_rejected", _text(chosen)[:60])
    responses = [chosen, rejected]
    edited = _response(record, "edited")
    if edited is not None and not _same(edited, chosen):
        if _same(edited, rejected):
            raise BadRecord("edited_equals_rejected", _text(edited)[:60])
        responses.insert(0, edited)
    return Preference(prompt=prompt, responses=responses)


def read_conversations(inputs, skipped: Skipped | None = None) -> tuple[list[list[dict[str, Any]]], Skipped]:
    """All valid SFT conversations of `inputs` and what was skipped (see the module docstring)."""
    return _read(inputs, parse_conversation, skipped, "SFT conversations")


def read_preferences(inputs, skipped: Skipped | None = None) -> tuple[list[Preference], Skipped]:
    """All valid preference records of `inputs` and what was skipped."""
    return _read(inputs, parse_preference, skipped, "preference records")


def read_prompts(inputs, skipped: Skipped | None = None) -> tuple[list[list[dict[str, Any]]], Skipped]:
    """Prompts for sampling: SFT records without the final assistant turn (one is dropped if present)."""
    def parse(record: Any) -> list[dict[str, Any]]:
        if not isinstance(record, Mapping):
            raise BadRecord("not_an_object", str(record)[:80])
        messages = _messages(record)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages or messages[-1]["role"] not in ("user", "ipython", "tool"):
            raise BadRecord("no_prompt", "a prompt must end with a user or tool message")
        return messages

    return _read(inputs, parse, skipped, "prompts")


def _read(inputs, parse, skipped: Skipped | None, what: str):
    skipped = skipped or Skipped()
    kept = []
    for where, record in read_records(inputs):
        try:
            if isinstance(record, str):
                raise BadRecord("not_json", record)
            kept.append(parse(record))
        except BadRecord as e:
            skipped.add(e, where)
    skipped.kept = len(kept)
    skipped.require_some(what)
    return kept, skipped


def write_records(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> int:
    """JSONL, written under a `.tmp` name and renamed, so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n

"""`pasture chat MODEL`: a terminal chat with history, a system prompt and streamed replies.

Commands typed at the prompt: `/reset` forgets the conversation (the system prompt
stays), `/save FILE` writes it as SFT-format JSON (`{"messages": [...]}`), `/system
TEXT` sets the system prompt, `/quit` (or Ctrl-D) leaves.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from pasture.serve.sampling import SamplingParams
from pasture.serve.served import ServedModel

HELP = "commands: /reset  /save FILE  /system TEXT  /quit"


class TerminalChat:
    """The conversation and its commands; `turn` streams one reply to `out`."""

    def __init__(self, served: ServedModel, params: SamplingParams, system: str | None = None,
                 out: TextIO = sys.stdout) -> None:
        self.served = served
        self.params = params
        self.system = system
        self.history: list[dict[str, Any]] = []
        self.out = out

    def messages(self) -> list[dict[str, Any]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def command(self, line: str) -> bool:
        """Runs a /command; False means leave."""
        name, _, arg = line.partition(" ")
        if name == "/quit":
            return False
        if name == "/reset":
            self.history.clear()
            print("(conversation cleared)", file=self.out)
        elif name == "/save":
            if not arg.strip():
                print("usage: /save FILE", file=self.out)
            else:
                Path(arg.strip()).write_text(json.dumps({"messages": self.messages()}, ensure_ascii=False, indent=2))
                print(f"(saved {len(self.messages())} messages to {arg.strip()})", file=self.out)
        elif name == "/system":
            self.system = arg.strip() or None
            print(f"(system prompt {'set' if self.system else 'cleared'})", file=self.out)
        else:
            print(HELP, file=self.out)
        return True

    def turn(self, text: str) -> str:
        """Sends one user message and streams the reply; returns it."""
        self.history.append({"role": "user", "content": text})
        prompt = self.served.encode_chat(self.messages(), None)
        room = self.served.engine.max_seq_len - len(prompt)
        if room < 1:
            self.history.pop()
            print("(the conversation no longer fits the context: /reset to start again)", file=self.out)
            return ""
        params = SamplingParams(**{**self.params.__dict__, "max_tokens": min(self.params.max_tokens, room)})
        handle = self.served.engine.submit(prompt, params)
        try:
            for event in handle:
                print(event.text, end="", flush=True, file=self.out)
        except KeyboardInterrupt:
            handle.cancel()
            print(" (stopped)", end="", file=self.out)
        print(file=self.out)
        reply = handle.result().text
        self.history.append({"role": "assistant", "content": reply})
        return reply

    def loop(self, read=input) -> None:
        print(f"chatting with {self.served.name}; {HELP}", file=self.out)
        while True:
            try:
                line = read("> ").strip()
            except EOFError:
                print(file=self.out)
                return
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return
                continue
            self.turn(line)

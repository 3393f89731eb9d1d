"""Question–answer data made from text already on the machine, no download: questions about
the Python standard library's functions answered from their docstrings (the way Llama 3 turned
pre-training text into Q&A pairs).

A preference pair answers "What does `json.dumps` do?" with the function's own docstring
summary (chosen) against another function's (rejected); SFT records keep the right answer.
The same seed gives the same records on every machine with the same Python.
"""

from __future__ import annotations

import importlib
import inspect
import random
from typing import Any

MODULES = ("os", "os.path", "json", "string", "textwrap", "shutil", "math", "statistics", "itertools",
           "functools", "random", "re", "collections", "heapq", "bisect", "glob", "fnmatch", "base64",
           "hashlib", "zlib", "gzip", "csv", "datetime", "calendar", "difflib", "operator", "copy", "pathlib",
           "tempfile", "time", "uuid", "secrets", "html", "urllib.parse", "unicodedata", "fractions", "decimal")


def docstring_facts(modules: tuple[str, ...] = MODULES) -> list[tuple[str, str]]:
    """(qualified name, first docstring sentence) of public functions and classes, sorted."""
    facts = {}
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if name.startswith("_") or not (inspect.isroutine(value) or inspect.isclass(value)):
                continue
            doc = inspect.getdoc(value) or ""
            summary = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
            if 20 <= len(summary) <= 200 and "(" not in summary[:len(name) + 2] and not summary.startswith(name):
                facts[f"{module_name}.{name}"] = summary
    return sorted(facts.items())


def question(name: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"In Python, what does `{name}` do? Answer in one sentence."}]


def preference_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` pairs: the right docstring summary against another function's."""
    facts = docstring_facts()
    rng = random.Random(seed)
    picked = rng.sample(facts, min(n, len(facts)))
    records = []
    for name, summary in picked:
        other = summary
        while other == summary:
            other = rng.choice(facts)[1]
        records.append({"messages": question(name), "chosen": {"role": "assistant", "content": summary},
                        "rejected": {"role": "assistant", "content": other}})
    return records


def sft_records(preferences: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"messages": [*r["messages"], r["chosen"]]} for r in preferences]

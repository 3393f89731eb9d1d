"""Per-stage accounting: documents and bytes in and out, removal reasons, time.

Each task keeps its own `StageStats` and returns them as plain dicts; the driver adds
them up, so numbers survive a resumed run (they are stored in the done-markers).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any


class StageStats:
    """Counters for the stages one task ran, in the order stages were first seen."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, Any]] = {}

    def _stage(self, name: str) -> dict[str, Any]:
        if name not in self.stages:
            self.stages[name] = {"docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0, "removed": {},
                                 "seconds": 0.0}
        return self.stages[name]

    def passed(self, stage: str, bytes_in: int, bytes_out: int | None = None) -> None:
        s = self._stage(stage)
        s["docs_in"] += 1
        s["docs_out"] += 1
        s["bytes_in"] += bytes_in
        s["bytes_out"] += bytes_in if bytes_out is None else bytes_out

    def dropped(self, stage: str, reason: str, bytes_in: int, counts_as_doc: bool = True) -> None:
        """A removal; `counts_as_doc=False` for things that never became a document (a corrupt file)."""
        s = self._stage(stage)
        s["docs_in"] += int(counts_as_doc)
        s["bytes_in"] += bytes_in
        s["removed"][reason] = s["removed"].get(reason, 0) + 1

    def add(self, stage: str, key: str, amount: float) -> None:
        s = self._stage(stage)
        s[key] = s.get(key, 0) + amount

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return self.stages


def merge_stats(parts: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Sum per-stage counters from many tasks, keeping first-seen stage order."""
    total: dict[str, dict[str, Any]] = {}
    for part in parts:
        for name, s in part.items():
            t = total.setdefault(name, {"removed": Counter()})
            for key, value in s.items():
                if key == "removed":
                    t["removed"].update(value)
                else:
                    t[key] = t.get(key, 0) + value
    for t in total.values():
        t["removed"] = dict(sorted(t["removed"].items(), key=lambda kv: -kv[1]))
    return total


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f}"


def write_report(out_dir: Path, stages: dict[str, dict[str, Any]], phases: dict[str, float],
                 extra: dict[str, Any]) -> dict[str, Any]:
    """Write `stats.json` and `stats.md`; returns what stats.json holds."""
    report = {"stages": stages, "phase_seconds": phases, **extra}
    (out_dir / "stats.json").write_text(json.dumps(report, indent=1))
    lines = ["# Curation statistics", "",
             "| stage | docs in | docs out | removed | MB in | MB out | seconds (all workers) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in stages.items():
        removed = sum(s["removed"].values())
        lines.append(f"| {name} | {s['docs_in']:,} | {s['docs_out']:,} | {removed:,} | {_mb(s['bytes_in'])} | "
                     f"{_mb(s['bytes_out'])} | {s['seconds']:.2f} |")
    lines += ["", "## Removal reasons", "", "| stage | reason | count |", "|---|---|---:|"]
    for name, s in stages.items():
        for reason, count in s["removed"].items():
            lines.append(f"| {name} | {reason} | {count:,} |")
    extra_counts = [(name, key, value) for name, s in stages.items() for key, value in s.items()
                    if key not in ("docs_in", "docs_out", "bytes_in", "bytes_out", "removed", "seconds")]
    if extra_counts:
        lines += ["", "## Other counts", "", "| stage | count | value |", "|---|---|---:|"]
        lines += [f"| {name} | {key} | {value:,} |" for name, key, value in extra_counts]
    lines += ["", "## Phases (wall clock)", "", "| phase | seconds |", "|---|---:|"]
    lines += [f"| {name} | {sec:.2f} |" for name, sec in phases.items()]
    for key, value in extra.items():
        if not isinstance(value, (dict, list)):
            lines.append(f"\n{key}: {value}")
    (out_dir / "stats.md").write_text("\n".join(lines) + "\n")
    return report

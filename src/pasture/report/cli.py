"""The report package's command: `pasture report RUN`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pasture.report.card import rebuild


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("report", description="Write report.md and a self-contained report.html (loss, learning rate and "
                       "throughput plots, final metrics) from a speedrun folder's speedrun.json or a "
                       "pre-training run folder's metrics.jsonl.")
    r.add_argument("run_dir")
    r.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    md, html = rebuild(Path(args.run_dir))
    print(f"wrote {md} and {html}")
    return 0

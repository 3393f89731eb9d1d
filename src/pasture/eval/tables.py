"""`pasture eval` results as markdown tables, for the report card and the command's output.
Plain dictionaries in, text out: the report renders results without loading the evaluation stack
(this module imports nothing of it)."""

from __future__ import annotations

# the headline metric first; the rest follow in this order when present
METRIC_ORDER = ("acc", "acc_norm", "acc_per_token", "acc_macro", "exact_match,flexible-extract",
                "exact_match,strict-match", "exact_match", "pass@1", "pass@10", "pass@100", "bits_per_byte")


def _cell(metrics: dict, name: str) -> str:
    value = metrics.get(name)
    if value is None:
        return "–"
    stderr = metrics.get(f"{name}_stderr")
    if stderr is not None and stderr == stderr:  # not NaN
        return f"{value:.4f} ± {stderr:.4f}"
    return f"{value:.4f}"


def results_table(results: dict, include_subtasks: bool = False) -> str:
    """One row per task: n, shots and every metric any task reports (`results` is the
    `--out` JSON, or just its "results" mapping). MMLU's 57 subjects only when asked."""
    tasks = results.get("results", results)
    groups = {sub for m in tasks.values() for sub in m.get("subtask_names", [])}
    names = [t for t in tasks if include_subtasks or t not in groups]
    present = [m for m in METRIC_ORDER if any(m in tasks[t] for t in names)]
    header = ["task", "n", "shots", *present]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        metrics = tasks[name]
        cells = [name, f"{metrics.get('n', 0):,}", str(metrics.get("shots", "–")), *(_cell(metrics, m) for m in present)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def inloop_table(records: list[dict]) -> str:
    """In-loop evaluation records (metrics.jsonl `kind: eval`): one row per step, one column per
    `<task>/<metric>` value."""
    columns = sorted({k for r in records for k in r if "/" in k})
    lines = ["| step | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for record in records:
        cells = [f"{record[c]:.4f}" if c in record else "–" for c in columns]
        lines.append(f"| {record.get('step', '?')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

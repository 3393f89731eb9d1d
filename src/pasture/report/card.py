"""The report card: `report.md` and a self-contained `report.html` for a run folder.

Everything comes from files the stages wrote (speedrun.json, metrics.jsonl, the
curation and tokenizer stats), so a report can be rebuilt at any time with
`pasture report RUN_DIR`.
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

from pasture import __version__
from pasture.errors import PastureError
from pasture.eval.tables import inloop_table, results_table
from pasture.train.metrics import read_metrics


def environment() -> dict[str, Any]:
    env = {
        "pasture": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
        if commit:
            env["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def plot_training(train_dir: Path, out_dir: Path) -> list[Path]:
    """Loss (train and validation), learning rate and throughput plots as PNG files."""
    matplotlib.use("Agg")

    train = read_metrics(train_dir, "train")
    val = read_metrics(train_dir, "val")
    if not train:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in train]
    paths = []

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(steps, [r["loss"] for r in train], label="train loss", linewidth=1)
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "loss.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, (lr_ax, tp_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    lr_ax.plot(steps, [r["lr"] for r in train])
    lr_ax.set_title("learning rate")
    lr_ax.set_xlabel("step")
    tp_ax.plot(steps, [r["tokens_per_s"] for r in train])
    tp_ax.set_title("tokens / s")
    tp_ax.set_xlabel("step")
    for ax in (lr_ax, tp_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "lr_throughput.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "–" if value is None else str(value)


def build_markdown(summary: dict[str, Any], plots: list[Path], run_dir: Path) -> str:
    """The report as markdown; `summary` is the speedrun's speedrun.json."""
    parts = [f"# pasture report card: {summary.get('name', run_dir.name)}", ""]
    parts += [f"Run folder `{run_dir}`, finished {summary.get('finished', '?')}, "
              f"{_fmt(summary.get('total_seconds', 0.0), 3)} s end to end.", ""]

    parts += ["## Environment", "", _table([(k, v) for k, v in summary.get("environment", {}).items()], ("", "")), ""]

    gather = summary.get("gather") or {}
    if gather.get("files"):
        parts += ["## Data: sources read", "",
                  f"{len(gather['files'])} input files given with --source, {_fmt(gather['bytes'])} bytes on disk.", "",
                  _table([(f["path"], _fmt(f["bytes"])) for f in gather["files"]], ("file", "bytes")), ""]
    if gather.get("roots"):
        parts += ["## Data: sources read", "",
                  f"{_fmt(gather['documents'])} documents, {_fmt(gather['bytes'])} bytes "
                  f"(budget {_fmt(gather['max_bytes'])}, seed {gather.get('seed', 0)}).", ""]
        rows = [(name, r["path"], r["kind"], _fmt(r.get("files_listed")), _fmt(r["documents"]), _fmt(r["bytes"]))
                for name, r in gather["roots"].items()]
        parts += [_table(rows, ("root", "path", "kind", "files found", "documents", "bytes")), ""]

    curation = summary.get("curation")
    if curation:
        parts += ["## Data: curation", "", curation.get("note", ""), ""]
        rows = [(s["stage"], _fmt(s.get("docs_in")), _fmt(s.get("docs_out")), _fmt(s.get("bytes_in")),
                 _fmt(s.get("bytes_out")), ", ".join(f"{k}: {v}" for k, v in (s.get("reasons") or {}).items()) or "–")
                for s in curation.get("stages", [])]
        parts += [_table(rows, ("stage", "docs in", "docs out", "bytes in", "bytes out", "removed (reason: docs)")), ""]

    tok = summary.get("tokenizer")
    if tok:
        parts += ["## Tokenizer", "", _table([(k, _fmt(v)) for k, v in tok.items() if not isinstance(v, (dict, list))],
                                              ("", "")), ""]
    tokens = summary.get("tokenize")
    if tokens:
        rows = [(split, _fmt(s.get("documents")), _fmt(s.get("tokens")), _fmt(s.get("bytes")))
                for split, s in tokens.get("splits", {}).items()]
        parts += ["## Token shards", "", _table(rows, ("split", "documents", "tokens", "bytes")), ""]

    train = summary.get("pretrain")
    if train:
        parts += ["## Pre-training", "", _table([(k, _fmt(v)) for k, v in train.items()], ("", "")), ""]
        parts += [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]

    final = summary.get("evaluation")
    if final:
        parts += ["## Final metrics (held-out text)", "",
                  _table([(k, _fmt(v)) for k, v in final.items()], ("metric", "value")), ""]
    benchmarks = summary.get("benchmarks")
    if benchmarks:
        parts += ["## Benchmarks (`pasture eval`)", "", results_table(benchmarks), ""]
    inloop = summary.get("in_loop_eval")
    if inloop:
        parts += ["## In-loop evaluation", "", inloop_table(inloop), ""]
    baselines = (final or {}).get("baselines")
    if baselines:
        names = {"unigram_bpb": "unigram model of the training tokens", "xz_bpb": "`xz -9e`, each document alone",
                 "zstd_bpb": "`zstd -19`, each document alone",
                 "zstd_dict_bpb": "`zstd -19` with a dictionary trained on the training documents"}
        rows = [("**this model**", _fmt(final["val_bpb"]), "")]
        rows += [(names.get(k, k), _fmt(v), _fmt(final["val_bpb"] < v)) for k, v in baselines.items()]
        parts += ["## Held-out bits per byte against baselines", "",
                  f"{_fmt(final.get('val_documents'))} held-out documents; the largest holds "
                  f"{_fmt(100 * final.get('largest_document_share', 0), 3)}% of their bytes.", "",
                  _table(rows, ("", "bits/byte", "model beats it")), ""]
    scaling = summary.get("scaling")
    if scaling:
        parts += ["## Scaling: where this model sits", "",
                  "Against the IsoFLOP sweep that chose the tiny preset (`pasture scaling sweep` on the default "
                  "sources); approach 3 is Chinchilla's L(N, D) fitted to the sweep's points. The sweep scored "
                  "the first held-out batches of its own tokenization, this run all of its held-out split.", "",
                  _table([(k, _fmt(v)) for k, v in scaling.items()], ("", "")), "", "![scaling](plots/scaling.png)", ""]
    samples = summary.get("samples")
    if samples:
        parts += ["## Samples", ""]
        for s in samples:
            parts += [f"**Prompt** `{s['prompt']}` (temperature {s['temperature']}, top-p {s['top_p']})", "",
                      "```", s["prompt"] + s["completion"], "```", ""]
    post = summary.get("post")
    if post:
        parts += post_training_section(post)
    layout = summary.get("layout")
    if layout:
        parts += ["## Run folder layout", "", _table(list(layout.items()), ("path", "what")), ""]
    return "\n".join(parts)


def post_training_section(post: dict[str, Any]) -> list[str]:
    """The speedrun's post-training: answer loss per stage, the reward model's and DPO's accuracies, samples."""
    losses = post["answer_loss"]
    rows = [(stage, _fmt(losses[stage])) for stage in ("base", "sft", "dpo") if stage in losses]
    accuracies = [("reward model, held-out pairwise accuracy", _fmt(post["reward_model_heldout_accuracy"])),
                  ("DPO, held-out reward accuracy", _fmt(post["dpo_heldout_reward_accuracy"])),
                  ("DPO, held-out preference accuracy", _fmt(post["dpo_heldout_preference_accuracy"])),
                  ("DPO, final training reward accuracy", _fmt(post["dpo_final_train_reward_accuracy"]))]
    sampled = post["rejection_sampling"]
    parts = ["## Post-training: reward model, SFT, rejection sampling, DPO", "",
             f"{post['heldout_questions']} held-out questions about the standard library, answered from its "
             f"docstrings; rejection sampling drew {sampled['samples']} replies for {sampled['prompts']} prompts "
             f"and kept {sampled['sft_records']} (plus {sampled['preference_pairs']} preference pairs). "
             f"The chat model is `{post['chat_model']}`.", "",
             _table(rows, ("model", "held-out answer loss (nats/token)")), "",
             _table(accuracies, ("", "accuracy")), "", "### Sample conversations", ""]
    for sample in post["samples"]:
        parts += [f"**User:** {sample['question']}", "", f"**Assistant:** {sample['answer']}", ""]
    return parts


def markdown_to_html(markdown: str, plot_dir: Path, title: str) -> str:
    """A small renderer for the markdown this module writes (headings, tables, code, images),
    with images inlined as data URIs so the file stands alone."""
    out, in_code, in_table = [], False, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells) + "</tr>")
            else:
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("!["):
            name = line[line.index("(") + 1:-1]
            data = base64.b64encode((plot_dir.parent / name).read_bytes()).decode()
            out.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if in_table:
        out.append("</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:left;font-size:14px}pre{background:#f5f5f5;padding:8px;white-space:pre-wrap}"
             "img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def _inline(text: str) -> str:
    escaped = html.escape(text)
    parts = escaped.split("`")
    escaped = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def write_report(run_dir: Path, summary: dict[str, Any], train_dir: Path | None = None) -> tuple[Path, Path]:
    """Write report.md and report.html into `run_dir`; plots come from `train_dir`'s metrics
    (default: the speedrun layout's `run_dir/train`)."""
    run_dir = Path(run_dir)
    train_dir = train_dir or run_dir / "train"
    plots = plot_training(train_dir, run_dir / "plots")
    summary = {"in_loop_eval": read_metrics(train_dir, "eval") or None, **summary}
    markdown = build_markdown(summary, plots, run_dir)
    md_path = run_dir / "report.md"
    md_path.write_text(markdown)
    html_path = run_dir / "report.html"
    html_path.write_text(markdown_to_html(markdown, run_dir / "plots", f"pasture report: {run_dir.name}"))
    return md_path, html_path


def pretrain_summary(run_dir: Path) -> dict[str, Any]:
    """A report summary of a plain `pasture pretrain` run folder, from its metrics and recipe."""
    train = read_metrics(run_dir, "train")
    val = read_metrics(run_dir, "val")
    skipped = read_metrics(run_dir, "event")
    recipe = json.loads((run_dir / "recipe.json").read_text()) if (run_dir / "recipe.json").exists() else {}
    mfus = [r["mfu"] for r in train if r.get("mfu") is not None]
    return {
        "name": run_dir.name,
        "environment": environment(),
        "pretrain": {
            "recipe": recipe.get("name"), "steps": train[-1]["step"] if train else 0,
            "tokens": train[-1]["tokens_seen"] if train else 0,
            "final train loss": train[-1]["loss"] if train else None,
            "tokens_per_s (mean)": round(float(np.mean([r["tokens_per_s"] for r in train])), 1) if train else None,
            "MFU": round(float(np.mean(mfus)), 4) if mfus else "n/a (CPU or unknown GPU)",
            "skipped steps": len(skipped),
        },
        "evaluation": {k: v for k, v in val[-1].items() if k not in ("kind",)} if val else None,
        "in_loop_eval": read_metrics(run_dir, "eval") or None,
        "benchmarks": _benchmarks(run_dir),
    }


def _benchmarks(run_dir: Path) -> dict[str, Any] | None:
    """`pasture eval --out RUN_DIR/eval/results.json` results, when the run folder holds them."""
    path = run_dir / "eval" / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def rebuild(run_dir: Path) -> tuple[Path, Path]:
    """Rebuild the report of a speedrun folder (from speedrun.json) or of a pre-training run
    folder (from metrics.jsonl)."""
    run_dir = Path(run_dir)
    if (run_dir / "speedrun.json").exists():
        return write_report(run_dir, json.loads((run_dir / "speedrun.json").read_text()))
    if (run_dir / "metrics.jsonl").exists():
        return write_report(run_dir, pretrain_summary(run_dir), train_dir=run_dir)
    raise PastureError(f"{run_dir} holds neither speedrun.json nor metrics.jsonl: not a run folder")

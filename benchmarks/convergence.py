"""Convergence check: one model trained on the same real tokens several ways, losses compared.

    python benchmarks/convergence.py --tokens .gpu-tokens [--steps 200] [--variants bf16,float8,fsdp]
    python benchmarks/convergence.py --preset tiny --steps 6 --seq 64 --batch 4 \\
        --recipe-overrides train.compile=false --runs /tmp/convergence    (CPU check of the harness)
    python benchmarks/convergence.py --from-json a/metrics.json b/metrics.json --out merged
        (table and plot again from stored metrics, e.g. of two GPU calls)

A faster path that changes the numbers shows up here first: each variant is one
`pasture pretrain` process (the real training loop, from this source tree) on the shipped
`1b` recipe cut to a short run (llama3.2-1b, `--steps` steps of `--batch` x `--seq` tokens,
warmup a tenth of the steps, cosine, no checkpoints), same data order and the same initial
weights (saved once under `--runs`/init), in its own run folder under `--runs`. Variants:

- `bf16`: the baseline, bf16 autocast over fp32 weights, compiled blocks;
- `float8`, `float8-tensorwise`: the same with torchao float8 linear layers (`train.float8`);
- `fsdp`: the multi-GPU code path on one GPU: `torchrun --nproc-per-node 1` puts the model
  under FSDP2 on a mesh of one (bf16 parameters, fp32 gradient reduction, DCP, the
  distributed loss and validation) instead of autocast over fp32 weights;
- `accum-ac`: the same batch as 4 accumulated micro-batches with selective activation
  checkpointing.

Writes to `--out`, after every variant so a run cut short still reports: `losses.png`
(losses, and each variant's loss minus bf16's), `convergence.md` (final loss, mean |loss -
bf16 loss| over the last 50 steps, final validation loss, tokens/s as the median over the
second half of the steps, MFU, peak memory and, on a GPU, `pasture plan`'s prediction) and
`metrics.json` (every variant's records), and prints the table. A variant that fails is
reported with its error, and the rest run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BASELINE = "bf16"
TAIL_STEPS = 50  # the loss difference to the baseline is averaged over the last steps
# each variant's overrides on top of the short-run recipe; `{micro}` is a quarter of the batch
VARIANTS: dict[str, list[str]] = {
    "bf16": [],
    "float8": ['train.float8="rowwise"'],
    "float8-tensorwise": ['train.float8="tensorwise"'],
    "fsdp": [],
    "accum-ac": ["train.micro_batch_size={micro}", 'parallel.activation_checkpoint="selective"'],
}
UNDER_TORCHRUN = {"fsdp"}  # variants launched as torchrun's only process
DEFAULT_VARIANTS = "bf16,float8,fsdp"


@dataclass
class RunResult:
    """One variant's outcome: its metrics records, or why it has none."""

    variant: str
    returncode: int
    wall_s: float
    records: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    planned_gib: float | None = None  # `pasture plan`'s memory for the run (on CUDA only)


def short_run_overrides(tokens: Path, run_dir: Path, steps: int, seq: int, batch: int) -> list[str]:
    """Overrides that turn a shipped recipe into a short fixed-shape run with no checkpoints."""
    return [
        f"data.train={json.dumps([str(tokens)])}", f"log.dir={json.dumps(str(run_dir))}", "log.every=1",
        "log.progress=false", "log.tensorboard=false", f"train.steps={steps}", f"train.seq_len={seq}",
        "train.seq_len_schedule=[]", f"train.batch_size={batch}", "train.batch_ramp=[]", "train.micro_batch_size=0",
        "train.anneal_steps=0", f"optim.warmup_steps={max(1, steps // 10)}", "checkpoint.every=0",
        "checkpoint.anneal_every=0", "checkpoint.final=false", "eval.every=0", "eval.batches=8", "eval.batch_size=4",
    ]


def variant_overrides(variant: str, batch: int) -> list[str]:
    if variant not in VARIANTS:
        raise SystemExit(f"convergence: unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return [o.format(micro=max(1, batch // 4)) for o in VARIANTS[variant]]


def run_variant(variant: str, recipe: str, overrides: list[str], run_dir: Path) -> RunResult:
    """`pasture pretrain` in a fresh process from this source tree; its log goes to run_dir/pretrain.log."""
    from pasture.train.metrics import read_metrics

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)}
    log_path = run_dir / "pretrain.log"
    started = time.perf_counter()
    launcher = [sys.executable]
    if variant in UNDER_TORCHRUN:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
    with open(log_path, "w") as log:
        proc = subprocess.run([*launcher, "-m", "pasture.cli", "pretrain", recipe, *overrides],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    wall = time.perf_counter() - started
    error = ""
    if proc.returncode:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        error = lines[-1] if lines else "no output"
    return RunResult(variant, proc.returncode, wall, read_metrics(run_dir), error)


def plan_memory_gib(recipe: str, overrides: list[str], tokens: Path) -> float | None:
    """`pasture plan`'s memory for this run on one GPU, to hold against the measured peak;
    None when the recipe does not load (the run then fails and says why)."""
    from pasture.errors import PastureError
    from pasture.model.info import GIB
    from pasture.train.parallel import Layout
    from pasture.train.plan import memory_plan
    from pasture.train.recipe import build_model_config, load_recipe, parse_recipe
    from pasture.train.shards import TokenDataset

    try:
        parsed = parse_recipe(load_recipe(recipe, overrides))
    except PastureError:
        return None
    t = parsed.train
    config = build_model_config(parsed, TokenDataset(tokens).vocab_size)
    micro = t.micro_batch_size or t.batch_size
    return memory_plan(config, Layout(1, 1, 1, 1, 1), parsed.parallel, t.seq_len, micro, t.batch_size // micro,
                       t.loss_chunk_tokens, t.float8).total / GIB


def save_initial_weights(recipe: str, overrides: list[str], tokens: Path, folder: Path) -> Path:
    """One initialisation of the run's model, saved for every variant (`model.init_from`): the
    single-process and FSDP paths draw their initial weights differently (DTensor has its own
    random streams), and the comparison is of execution paths, not of seeds."""
    from pasture.model import build, save
    from pasture.train.recipe import build_model_config, load_recipe, parse_recipe
    from pasture.train.shards import TokenDataset

    parsed = parse_recipe(load_recipe(recipe, overrides))
    config = build_model_config(parsed, TokenDataset(tokens).vocab_size)
    shutil.rmtree(folder, ignore_errors=True)
    return save(build(config, seed=parsed.train.seed), folder)


def _losses(result: RunResult) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in result.records if r["kind"] == "train"}


def summarize(result: RunResult, baseline: RunResult | None, tail: int = TAIL_STEPS) -> dict[str, Any]:
    """The table row of one variant; loss differences are over the last `tail` steps both runs logged."""
    train = [r for r in result.records if r["kind"] == "train"]
    row: dict[str, Any] = {"variant": result.variant, "steps": len(train), "wall_s": result.wall_s,
                           "status": "ok" if result.returncode == 0 else f"failed ({result.returncode}): {result.error}"}
    if not train:
        return row
    second_half = train[len(train) // 2:]
    row["final_loss"] = train[-1]["loss"]
    row["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in second_half)
    mfu = [r["mfu"] for r in second_half if r.get("mfu") is not None]
    row["mfu"] = statistics.median(mfu) if mfu else None
    row["peak_gib"] = max(r.get("memory_gib") or 0.0 for r in train)
    if result.planned_gib:
        row["plan_gib"] = result.planned_gib
        row["peak_over_plan"] = row["peak_gib"] / result.planned_gib
    val = [r for r in result.records if r["kind"] == "val"]
    row["val_loss"] = val[-1]["val_loss"] if val else None
    if baseline is not None and baseline is not result:
        mine, base = _losses(result), _losses(baseline)
        common = sorted(set(mine) & set(base))[-tail:]
        if common:
            row["tail_steps"] = len(common)
            row["mean_abs_diff"] = statistics.fmean(abs(mine[s] - base[s]) for s in common)
    return row


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = ["variant", "steps", "final loss", f"mean abs diff vs {BASELINE}", "val loss", "tokens/s", "MFU",
              "peak GiB", "plan GiB", "peak/plan", "wall s", "status"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 2) + "---|"]
    for row in rows:
        diff = row.get("mean_abs_diff")
        diff_cell = "(baseline)" if row["variant"] == BASELINE else (
            f"{diff:.3g} (last {row['tail_steps']})" if diff is not None else "-")
        cells = [row["variant"], str(row["steps"]), _cell(row.get("final_loss"), ".4f"), diff_cell,
                 _cell(row.get("val_loss"), ".4f"), _cell(row.get("tokens_per_s"), ",.0f"),
                 _cell(row.get("mfu"), ".1%"), _cell(row.get("peak_gib"), ".1f"), _cell(row.get("plan_gib"), ".1f"),
                 _cell(row.get("peak_over_plan"), ".2f"), f"{row['wall_s']:.0f}",
                 row["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_losses(results: list[RunResult], path: Path) -> None:
    """Each variant's loss per step, and below it the difference to the baseline's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next((_losses(r) for r in results if r.variant == BASELINE), {})
    fig, (loss_ax, diff_ax) = plt.subplots(2, 1, figsize=(8, 6.4), sharex=True, height_ratios=[2, 1])
    for result in results:
        losses = _losses(result)
        if not losses:
            continue
        steps = sorted(losses)
        loss_ax.plot(steps, [losses[s] for s in steps], label=result.variant, linewidth=1)
        common = [s for s in steps if s in base]
        if base and result.variant != BASELINE and common:
            diff_ax.plot(common, [losses[s] - base[s] for s in common], label=result.variant, linewidth=1)
    loss_ax.set_ylabel("train loss (nats/token)")
    diff_ax.set_ylabel(f"loss - {BASELINE} loss")
    diff_ax.axhline(0, color="black", linewidth=0.5)
    diff_ax.set_xlabel("step")
    for ax in (loss_ax, diff_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: list[RunResult], out: Path, header: str) -> str:
    """losses.png, convergence.md and metrics.json in `out`; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    baseline = next((r for r in results if r.variant == BASELINE), None)
    table = markdown_table([summarize(r, baseline) for r in results])
    (out / "convergence.md").write_text(f"# Convergence check\n\n{header}\n\n{table}\n")
    (out / "metrics.json").write_text(json.dumps([asdict(r) for r in results]) + "\n")
    plot_losses(results, out / "losses.png")
    return table


def load_results(paths: list[Path]) -> list[RunResult]:
    """Results stored in metrics.json files; a variant found again later replaces the earlier one."""
    by_variant: dict[str, RunResult] = {}
    for path in paths:
        for item in json.loads(path.read_text()):
            by_variant[item["variant"]] = RunResult(**item)
    return list(by_variant.values())


def describe_environment() -> str:
    from pasture.report.card import environment

    return ", ".join(f"{k} {v}" for k, v in environment().items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=Path, default=REPO / ".gpu-tokens",
                        help="token folder (benchmarks/prepare_gpu_tokens.py)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--recipe", default="1b", help="shipped recipe name or TOML path")
    parser.add_argument("--preset", default=None, help="model preset instead of the recipe's (tiny for a CPU check)")
    parser.add_argument("--recipe-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more `pasture pretrain` overrides, for every variant (after the script's own)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "convergence", help="one run folder per variant")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: --runs)")
    parser.add_argument("--from-json", nargs="+", type=Path, default=None, metavar="METRICS_JSON",
                        help="run nothing: report the results stored in these metrics.json files")
    args = parser.parse_args(argv)
    out = args.out or args.runs
    if args.from_json:
        print(write_report(load_results(args.from_json), out, f"Merged from {', '.join(map(str, args.from_json))}."))
        return 0
    if not (args.tokens / "index.json").is_file():
        raise SystemExit(f"convergence: {args.tokens} holds no token dataset; run benchmarks/prepare_gpu_tokens.py")
    header = (f"{args.recipe} recipe{f', {args.preset} preset' if args.preset else ''}, {args.steps} steps of "
              f"{args.batch} x {args.seq} tokens on `{args.tokens}`, overrides {args.recipe_overrides or 'none'}; "
              f"{describe_environment()}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants:
        raise SystemExit("convergence: --variants names none")
    per_variant = {v: variant_overrides(v, args.batch) for v in variants}  # unknown names fail before any run
    preset = [f"model.preset={json.dumps(args.preset)}"] if args.preset else []
    import torch

    on_gpu = torch.cuda.is_available()  # the plan is of GPU memory; on CPU pretrain logs the RSS
    common = [*short_run_overrides(args.tokens.resolve(), args.runs.resolve(), args.steps, args.seq, args.batch),
              *preset, *args.recipe_overrides]
    init = save_initial_weights(args.recipe, common, args.tokens, (args.runs / "init").resolve())
    results: list[RunResult] = []
    for variant in variants:
        run_dir = (args.runs / variant).resolve()
        overrides = [*short_run_overrides(args.tokens.resolve(), run_dir, args.steps, args.seq, args.batch),
                     *preset, f"model.init_from={json.dumps(str(init))}", *per_variant[variant], *args.recipe_overrides]
        print(f"{variant}: pasture pretrain {args.recipe} {' '.join(overrides)}", flush=True)
        result = run_variant(variant, args.recipe, overrides, run_dir)
        if on_gpu:
            result.planned_gib = plan_memory_gib(args.recipe, overrides, args.tokens)
        results.append(result)
        print(f"{variant}: exit {result.returncode} after {result.wall_s:.0f} s{f': {result.error}' if result.error else ''}",
              flush=True)
        table = write_report(results, out, header)
    print(f"\n{table}\n\nwrote {out / 'convergence.md'}, {out / 'losses.png'}, {out / 'metrics.json'}")
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

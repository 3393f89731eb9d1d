"""`pasture scaling sweep`: an IsoFLOP grid of pre-training runs (Llama 3 §3.2.1).

For each compute budget C, models of several widths train on C / (6 N) tokens each.
Every point's recipe follows from its size and budget as Llama 3's scaling runs did:
linear warmup, cosine decay to 0.1x peak, a peak learning rate that shrinks slowly with
size, weight decay 0.1 x the current learning rate, and one batch size per budget.
Each point is an ordinary `pasture pretrain` run (a shipped recipe plus overrides) in
its own folder; its line in `points.jsonl` is written when it finishes, so a rerun
skips finished points and resumes an interrupted one from its checkpoint.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pasture.errors import PastureError
from pasture.model.config import ModelConfig, preset
from pasture.model.info import num_matmul_params, num_params
from pasture.train.pretrain import pretrain
from pasture.train.recipe import load_recipe, parse_recipe
from pasture.train.shards import TokenDataset

PARAMS_CONVENTION = ("params: matmul parameters (every linear layer and the output projection, tied or not; "
                     "not the embedding lookup, not norm gains); flops = 6 * params * tokens")
# Llama 3's scaling runs: peak LR 4e-4 at 40M parameters down to 2e-4 at 16B, i.e. LR ~ N^-0.116,
# and batches from 250K tokens at 6e18 FLOPs to 4M at 1e22, i.e. batch ~ C^0.374
LR_SIZE_EXPONENT = math.log(4e-4 / 2e-4) / math.log(16e9 / 40e6)
BATCH_COMPUTE_EXPONENT = math.log(4e6 / 250e3) / math.log(1e22 / 6e18)
# widths tried (model_shape gives the rest; tiny is width 128: 4 heads, 4 layers)
WIDTHS = (16, 32, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 448, 512, 640, 768, 1024, 1280, 1536, 2048)


@dataclass
class SweepConfig:
    data: list[str]  # token dataset folders (`pasture tokenize` output); the first one's val split is held out
    out: Path
    budgets: list[float]
    widths: list[int] = field(default_factory=list)  # empty: those of WIDTHS near each budget's optimum guess
    size_spread: float = 4.0  # automatic widths: N within [N_guess / spread, N_guess * spread]
    recipe: str = "tiny"  # base recipe; the sweep sets model shape, steps, batch, schedule and logging
    seq_len: int = 256
    batch_tokens: int = 0  # tokens per step at every budget; 0: batch_tokens(flops, seq_len)
    lr: float = 3e-3  # peak learning rate of a model with `lr_reference_params` parameters
    lr_reference_params: float = 1e6
    min_steps: int = 50  # fewer steps than this cannot show a cosine schedule; such points are left out
    eval_batches: int = 32  # held-out batches of the final loss (the same ones for every point)
    eval_tasks: list[str] = field(default_factory=list)  # `pasture eval` tasks scored on every point
    overrides: list[str] = field(default_factory=list)  # more recipe overrides for every point
    progress: bool = True

    @property
    def points_file(self) -> Path:
        return self.out / "points.jsonl"


def model_shape(width: int) -> dict[str, int]:
    """The sweep's family: one head per 32 of width (at least one), half as many KV heads
    (all of them when the head count is odd), one layer per 32 of width (at least two)."""
    heads = max(1, width // 32)
    if width % 16 or width <= 0 or width % heads:
        raise PastureError(f"sweep width {width}: must be a positive multiple of 16 that its {heads} heads divide")
    return {"dim": width, "n_heads": heads, "n_kv_heads": heads // 2 if heads % 2 == 0 else heads,
            "n_layers": max(2, width // 32)}


def shape_config(width: int, vocab_size: int) -> ModelConfig:
    return preset("tiny").replace(vocab_size=vocab_size, **model_shape(width))


def batch_tokens(flops: float, seq_len: int) -> int:
    """One batch size per budget: Llama 3's 250K tokens at 6e18 FLOPs scaled as C^0.374, to a
    power of two of at least one sequence."""
    tokens = 250e3 * (flops / 6e18) ** BATCH_COMPUTE_EXPONENT
    return max(seq_len, 2 ** round(math.log2(tokens)))


def peak_lr(params: float, cfg: SweepConfig) -> float:
    return cfg.lr * (params / cfg.lr_reference_params) ** -LR_SIZE_EXPONENT


def plan_points(cfg: SweepConfig, vocab_size: int) -> list[dict[str, Any]]:
    """Every (budget, width) of the grid with its recipe values, smallest budget first."""
    plans = []
    for flops in sorted(cfg.budgets):
        batch = cfg.batch_tokens or batch_tokens(flops, cfg.seq_len)
        guess = math.sqrt(flops / 120)  # Chinchilla's 20 tokens per parameter: the centre of the sizes tried
        for width in cfg.widths or WIDTHS:
            params = num_matmul_params(shape_config(width, vocab_size))
            if not cfg.widths and not guess / cfg.size_spread <= params <= guess * cfg.size_spread:
                continue
            steps = round(flops / (6 * params) / batch)
            if steps < cfg.min_steps:
                continue
            plans.append({"flops": flops, "width": width, "params": params, "steps": steps, "batch_tokens": batch,
                          "lr": peak_lr(params, cfg), "warmup_steps": min(2000, max(1, math.ceil(0.03 * steps))),
                          "run_dir": str(cfg.out / "runs" / f"C{flops:.2e}_w{width}")})
    return plans


def point_overrides(plan: dict[str, Any], cfg: SweepConfig) -> list[str]:
    """The recipe overrides that make one point's pre-training run."""
    shape = model_shape(plan["width"])
    return [
        'model.preset="tiny"', *(f"model.{k}={v}" for k, v in shape.items()),
        f"data.train={json.dumps(cfg.data)}",
        f"train.steps={plan['steps']}", f"train.seq_len={cfg.seq_len}",
        f"train.batch_size={plan['batch_tokens'] // cfg.seq_len}", "train.batch_ramp=[]", "train.seq_len_schedule=[]",
        "train.anneal_steps=0",
        f"optim.lr={plan['lr']}", f"optim.warmup_steps={plan['warmup_steps']}", 'optim.schedule="cosine"',
        "optim.min_lr_ratio=0.1",
        # torch's AdamW decays weights by lr * weight_decay each step: 0.1 x the current learning rate
        "optim.weight_decay=0.1",
        "checkpoint.every=0", "checkpoint.keep_last=1", "checkpoint.anneal_every=0",
        "eval.every=0", f"eval.batches={cfg.eval_batches}", "eval.prompts=[]",
        f'log.dir="{plan["run_dir"]}"', f"log.every={max(1, plan['steps'] // 50)}", "log.tensorboard=false",
        f"log.progress={'true' if cfg.progress else 'false'}", 'resume="auto"',
        *cfg.overrides,
    ]


def read_points_file(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise PastureError(f"{path}:{n} is not JSON ({e})") from None
    return rows


def evaluate_tasks(run_dir: str, tasks: list[str], out: Path) -> dict[str, float]:
    """Per-task metrics of `pasture eval` on a point's model, as `task/metric` keys."""
    command = [sys.executable, "-m", "pasture.cli", "eval", run_dir, "--tasks", ",".join(tasks), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise PastureError(f"`{' '.join(command[2:])}` failed: {done.stderr.strip()[-500:]}")
    results = json.loads(out.read_text())["results"]
    return {f"{task}/{metric}": value for task, metrics in results.items()
            for metric, value in metrics.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}


def run_point(plan: dict[str, Any], cfg: SweepConfig, vocab_size: int, log: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    raw = load_recipe(cfg.recipe, point_overrides(plan, cfg))
    summary = pretrain(parse_recipe(raw), raw, log=log)
    if summary["steps"] != plan["steps"]:
        raise PastureError(f"point {plan['run_dir']} stopped at step {summary['steps']} of {plan['steps']}")
    config = shape_config(plan["width"], vocab_size)
    row = {"flops": plan["flops"], "params": plan["params"], "tokens": summary["tokens_seen"],
           "loss": summary["val_loss"], "params_convention": PARAMS_CONVENTION,
           "flops_actual": 6 * plan["params"] * summary["tokens_seen"], "params_total": num_params(config),
           "val_bpb": summary["val_bpb"], "val_tokens": summary["val_tokens"], "final_train_loss": summary["final_loss"],
           **{k: plan[k] for k in ("width", "steps", "batch_tokens", "lr", "warmup_steps", "run_dir")},
           **model_shape(plan["width"]), "seconds": round(time.perf_counter() - started, 1)}
    if cfg.eval_tasks:
        row.update(evaluate_tasks(plan["run_dir"], cfg.eval_tasks, Path(plan["run_dir"]) / "eval.json"))
    return row


def sweep(cfg: SweepConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every point of the grid not yet in the points file; returns all its records."""
    if not cfg.budgets:
        raise PastureError("give at least one compute budget (--budgets 1e13,3e13)")
    vocab_size = max(TokenDataset(p, "train").vocab_size for p in cfg.data)
    plans = plan_points(cfg, vocab_size)
    if not plans:
        raise PastureError("no (budget, width) pair gives a run of at least "
                           f"{cfg.min_steps} steps; raise the budgets or pass smaller --widths")
    cfg.out.mkdir(parents=True, exist_ok=True)
    rows = read_points_file(cfg.points_file)
    done = {r.get("run_dir") for r in rows}
    for i, plan in enumerate(plans, 1):
        if plan["run_dir"] in done:
            log(f"[{i}/{len(plans)}] C={plan['flops']:.2e} width {plan['width']}: finished, skipped")
            continue
        log(f"[{i}/{len(plans)}] C={plan['flops']:.2e} width {plan['width']}: N={plan['params']:,} "
            f"{plan['steps']} steps x {plan['batch_tokens']} tokens, peak LR {plan['lr']:.2e}")
        row = run_point(plan, cfg, vocab_size, log)
        with cfg.points_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
        log(f"    held-out loss {row['loss']:.4f} ({row['val_bpb']:.4f} bits/byte) in {row['seconds']:.0f} s")
    return rows

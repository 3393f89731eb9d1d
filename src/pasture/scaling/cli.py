"""`pasture scaling sweep|fit|forecast`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pasture.errors import PastureError
from pasture.scaling.laws import compute_optimal, downstream_forecast, fit_all, read_points
from pasture.scaling.plots import plot_isoflops, plot_optimal_tokens
from pasture.scaling.sweep import SweepConfig, read_points_file, sweep


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    return [int(x) for x in _floats(text)]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scaling", help="scaling laws: IsoFLOP sweeps, fits (Chinchilla approaches 2 and 3), forecasts",
                       description="Llama 3's scaling-law method (§3.2.1): train an IsoFLOP grid, fit where the "
                       "compute-optimal model lies, and forecast loss and downstream accuracy at larger budgets.")
    steps = p.add_subparsers(dest="scaling_command", metavar="{sweep,fit,forecast}")

    s = steps.add_parser("sweep", help="pre-train an IsoFLOP grid of compute budgets x model sizes",
                         description="For each budget C, models of several widths train on C/(6N) tokens "
                         "(N: matmul parameters, stated in every points record) with Llama 3's scaling recipe: "
                         "warmup, cosine decay to 0.1x peak, weight decay 0.1x the learning rate, one batch size "
                         "per budget. Each point is a `pasture pretrain` run of --recipe with overrides; finished "
                         "points are skipped on a rerun. Writes OUT/points.jsonl.")
    s.add_argument("--data", nargs="+", required=True, help="token dataset folders (`pasture tokenize` output)")
    s.add_argument("--budgets", type=_floats, required=True, help="compute budgets in FLOPs, e.g. 2e12,7e12,3.5e13")
    s.add_argument("--out", type=Path, required=True, help="sweep folder: points.jsonl and runs/")
    s.add_argument("--widths", type=_ints, default=[],
                   help="model widths (multiples of 32) at every budget; default: those within --size-spread of "
                        "20 tokens per parameter")
    s.add_argument("--size-spread", type=float, default=4.0, help="automatic widths: N within this factor of the guess")
    s.add_argument("--recipe", default="tiny", help="base pre-training recipe (default tiny)")
    s.add_argument("--seq-len", type=int, default=256)
    s.add_argument("--batch-tokens", type=int, default=0,
                   help="tokens per step at every budget (default: Llama 3's 250K at 6e18 FLOPs scaled as C^0.374)")
    s.add_argument("--lr", type=float, default=3e-3, help="peak learning rate at 1M parameters (scaled as N^-0.116)")
    s.add_argument("--eval-batches", type=int, default=32, help="held-out batches of the final loss")
    s.add_argument("--eval-tasks", default="", help="`pasture eval` tasks scored on each point (task/metric keys)")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="more recipe overrides for every point")
    s.set_defaults(func=_sweep)

    f = steps.add_parser("fit", help="fit approach 2 (IsoFLOP parabolas) and approach 3 (L(N, D)) to a points file",
                         description="Per budget, a parabola of loss in ln(tokens) and its minimum; power laws "
                         "D*(C) = A C^alpha and N*(C) through the minima (approach 2); L(N, D) = E + A/N^a + "
                         "B/D^b by Huber loss on log-loss from a grid of starts (approach 3); bootstrap "
                         "uncertainties; plots like Llama 3's Figures 2 and 3 beside FIT.json.")
    f.add_argument("points", type=Path, help="points JSONL: {\"flops\", \"params\", \"tokens\", \"loss\", ...} per line")
    f.add_argument("--out", type=Path, required=True, help="FIT.json to write")
    f.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits for the uncertainties (default 200)")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=_fit)

    c = steps.add_parser("forecast", help="compute-optimal size, tokens and loss at a budget; downstream accuracy",
                         description="From a fit file: the compute-optimal parameters, tokens and loss at --flops. "
                         "With --points and --task: Llama 3's two-stage forecast, the correct answer's normalised "
                         "NLL linear in log compute, then accuracy a sigmoid of that NLL, both fitted on the "
                         "sweep's points carrying TASK/nll and TASK/acc.")
    c.add_argument("--flops", type=float, required=True)
    c.add_argument("--fit", type=Path, required=True, help="FIT.json from `pasture scaling fit`")
    c.add_argument("--points", type=Path, help="points JSONL with per-task eval keys")
    c.add_argument("--task", action="append", default=[], help="task to forecast (repeatable)")
    c.add_argument("--chance", type=float, default=0.25, help="the task's chance accuracy (default 0.25)")
    c.add_argument("--nll-key", default="nll", help="metric holding the correct answer's normalised NLL")
    c.add_argument("--acc-key", default="acc")
    c.set_defaults(func=_forecast)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _sweep(args: argparse.Namespace) -> int:
    cfg = SweepConfig(data=args.data, out=args.out, budgets=args.budgets, widths=args.widths,
                      size_spread=args.size_spread, recipe=args.recipe, seq_len=args.seq_len,
                      batch_tokens=args.batch_tokens, lr=args.lr, eval_batches=args.eval_batches,
                      eval_tasks=[t for t in args.eval_tasks.split(",") if t], overrides=args.overrides,
                      progress=not args.no_progress)
    rows = sweep(cfg)
    print(f"{len(rows)} points in {cfg.points_file}")
    return 0


def _fit(args: argparse.Namespace) -> int:
    points = read_points(read_points_file(args.points))
    fit = fit_all(points, bootstrap=args.bootstrap, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fit, indent=2) + "\n")
    stem = args.out.with_suffix("")
    plots = [plot_isoflops(points, Path(f"{stem}-isoflops.png")), plot_optimal_tokens(fit, Path(f"{stem}-tokens.png"))]
    a2, a3 = fit["approach2"], fit["approach3"]
    if "error" in a2:
        print(f"approach 2: not fitted ({a2['error']})")
    else:
        print(f"approach 2: D*(C) = {a2['A_tokens']:.4g} C^{a2['alpha_tokens']:.4f}, "
              f"N*(C) = {a2['A_params']:.4g} C^{a2['alpha_params']:.4f}")
    print(f"approach 3: L(N, D) = {a3['E']:.4f} + {a3['A']:.4g}/N^{a3['a']:.4f} + {a3['B']:.4g}/D^{a3['b']:.4f}")
    print(f"wrote {args.out}, {plots[0]}, {plots[1]}")
    return 0


def _forecast(args: argparse.Namespace) -> int:
    if not args.fit.is_file():
        raise PastureError(f"--fit {args.fit}: no such file (write one with `pasture scaling fit`)")
    result = compute_optimal(json.loads(args.fit.read_text()), args.flops)
    if args.task:
        if args.points is None:
            raise PastureError("--task needs --points, the sweep's points file with per-task eval keys")
        rows = read_points_file(args.points)
        result["downstream"] = [downstream_forecast(rows, task, args.flops, args.chance, args.nll_key, args.acc_key)
                                for task in args.task]
    print(json.dumps(result, indent=2))
    return 0

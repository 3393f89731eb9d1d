"""Plots like Llama 3's Figures 2 and 3: IsoFLOP curves with their parabola minima, and
the compute-optimal token count against compute with its power law."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
import numpy as np  # noqa: E402

from pasture.scaling.laws import Point, approach3_optimum, by_budget, isoflop_minimum  # noqa: E402


def plot_isoflops(points: list[Point], path: Path, highlight: dict[str, float] | None = None) -> Path:
    """Figure 2: held-out loss against training tokens, one colour and parabola per budget;
    `highlight` ({"tokens", "loss", "label"}) marks one run, e.g. the speedrun's model."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = by_budget(points)
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(groups)))
    for colour, (flops, group) in zip(colours, groups.items()):
        ax.scatter([p.tokens for p in group], [p.loss for p in group], color=colour, label=f"{flops:.1e} FLOPs")
        minimum = isoflop_minimum(group)
        if minimum is not None:
            x = np.linspace(np.log(min(p.tokens for p in group)), np.log(max(p.tokens for p in group)), 100)
            ax.plot(np.exp(x), np.polyval(minimum["parabola"], x), color=colour, lw=1)
            ax.scatter([minimum["tokens"]], [minimum["loss"]], color=colour, marker="D", edgecolor="black", zorder=3)
    if highlight:
        ax.scatter([highlight["tokens"]], [highlight["loss"]], marker="*", s=250, color="crimson", edgecolor="black",
                   zorder=4, label=highlight.get("label", "this run"))
    return _save(fig, ax, path, "training tokens", "held-out loss (nats/token)",
                 "IsoFLOP curves (diamonds: parabola minima)")


def plot_optimal_tokens(fit: dict[str, Any], path: Path) -> Path:
    """Figure 3: compute-optimal tokens per budget and the fitted D*(C) = A·C^alpha."""
    a2, a3 = fit["approach2"], fit["approach3"]
    optimal = a2["optimal"]
    flops = np.array([m["flops"] for m in optimal] or [1.0])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([m["flops"] for m in optimal], [m["tokens"] for m in optimal], color="black", label="IsoFLOP minima")
    line = np.geomspace(flops.min() / 3, flops.max() * 3, 50)
    if "A_tokens" in a2:
        ax.plot(line, a2["A_tokens"] * line ** a2["alpha_tokens"], color="tab:blue",
                label=f"approach 2: D = {a2['A_tokens']:.3g} C^{a2['alpha_tokens']:.3f}")
    ratio = a3["a"] / (a3["a"] + a3["b"])
    ax.plot(line, [approach3_optimum(a3, c)["tokens"] for c in line], color="tab:orange", ls="--",
            label=f"approach 3: D ~ C^{ratio:.3f}")
    ax.set_yscale("log")
    return _save(fig, ax, path, "compute (FLOPs)", "compute-optimal training tokens",
                 "Scaling law for compute-optimal tokens")


def _save(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Log x axis, labels, legend; write the PNG and free the figure."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Scaling-law fits on IsoFLOP points (Llama 3 §3.2.1, Chinchilla approaches 2 and 3).

A point is one finished pre-training run: compute budget C (FLOPs), parameters N,
training tokens D and held-out loss L. Approach 2 fits, per budget, a parabola of L in
ln D; its minimum is the compute-optimal run of that budget, and power laws through
those minima give D*(C) = A·C^α and N*(C). Approach 3 fits L(N, D) = E + A/N^a + B/D^b
to all points at once with Chinchilla's Huber loss on log-loss from a grid of starts.
Approach 2 is biased when a budget's sizes are not centred on its optimum, so both are
reported. Uncertainties come from bootstrap refits over resampled points.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from scipy.optimize import minimize

from pasture.errors import PastureError

HUBER_DELTA = 1e-3  # Chinchilla's delta for the Huber loss on log-loss residuals
# starting points of approach 3 in (log A, log B, log E, a, b): a coarse version of Chinchilla's grid
APPROACH3_STARTS = list(itertools.product([0.0, 5.0, 10.0], [0.0, 5.0, 10.0], [-1.0, 0.0, 1.0], [0.25, 0.5, 1.0],
                                          [0.25, 0.5, 1.0]))


@dataclass
class Point:
    flops: float
    params: float
    tokens: float
    loss: float


def read_points(rows: Iterable[dict[str, Any]]) -> list[Point]:
    """Points from the points file's records; a record without one of the four keys is an error."""
    points = []
    for i, row in enumerate(rows, 1):
        missing = [k for k in ("flops", "params", "tokens", "loss") if k not in row]
        if missing:
            raise PastureError(f"points record {i} lacks {', '.join(missing)}")
        point = Point(float(row["flops"]), float(row["params"]), float(row["tokens"]), float(row["loss"]))
        if min(point.flops, point.params, point.tokens, point.loss) <= 0 or not math.isfinite(point.loss):
            raise PastureError(f"points record {i}: flops, params, tokens and loss must be positive and finite")
        points.append(point)
    return points


def by_budget(points: list[Point]) -> dict[float, list[Point]]:
    groups: dict[float, list[Point]] = defaultdict(list)
    for p in points:
        groups[p.flops].append(p)
    return dict(sorted(groups.items()))


# ---------------------------------------------------------------- approach 2


def isoflop_minimum(points: list[Point]) -> dict[str, float] | None:
    """The parabola L = c2·x² + c1·x + c0 in x = ln D through one budget's points, and its
    minimum; None when it has no minimum (fewer than 3 sizes, or opening downwards)."""
    if len({p.tokens for p in points}) < 3:
        return None
    x = np.log([p.tokens for p in points])
    c2, c1, c0 = np.polyfit(x, [p.loss for p in points], 2)
    if c2 <= 0:
        return None
    x_opt = -c1 / (2 * c2)
    flops = points[0].flops
    tokens = math.exp(x_opt)
    # N = C / (6 D): the budget's own convention, whatever the points' exact token counts were
    # a vertex outside the sampled sizes is an extrapolation: the budget needs sizes on its other side
    inside = bool(x.min() <= x_opt <= x.max())
    return {"flops": flops, "tokens": tokens, "params": flops / (6 * tokens),
            "loss": float(c0 - c1 * c1 / (4 * c2)), "curvature": float(c2),
            "parabola": [float(c2), float(c1), float(c0)], "inside_sampled_range": inside}


def fit_power_law(x: Iterable[float], y: Iterable[float]) -> tuple[float, float]:
    """(A, alpha) of y = A·x^alpha by least squares in log-log space."""
    alpha, log_a = np.polyfit(np.log(list(x)), np.log(list(y)), 1)
    return float(math.exp(log_a)), float(alpha)


def approach2(points: list[Point]) -> dict[str, Any]:
    """Per-budget parabola minima and the power laws D*(C) = A_tokens·C^alpha_tokens,
    N*(C) = A_params·C^alpha_params through them."""
    optimal = [m for group in by_budget(points).values() if (m := isoflop_minimum(group)) is not None]
    if len(optimal) < 2:
        raise PastureError(f"approach 2 needs at least 2 budgets with 3+ sizes and a minimum; found {len(optimal)}")
    a_tokens, alpha_tokens = fit_power_law([m["flops"] for m in optimal], [m["tokens"] for m in optimal])
    a_params, alpha_params = fit_power_law([m["flops"] for m in optimal], [m["params"] for m in optimal])
    return {"alpha_tokens": alpha_tokens, "A_tokens": a_tokens, "alpha_params": alpha_params,
            "A_params": a_params, "optimal": optimal}


# ---------------------------------------------------------------- approach 3


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals and its derivative."""
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    return value, np.where(small, r, delta * np.sign(r))


def _approach3_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
                         weights: np.ndarray) -> tuple[float, np.ndarray]:
    """Chinchilla's objective and gradient: Huber(LSE(logA - a·lnN, logB - b·lnD, logE) - ln L)."""
    log_a, log_b, log_e, a, b = theta
    terms = np.stack([log_a - a * log_n, log_b - b * log_d, np.full_like(log_n, log_e)])
    top = terms.max(axis=0)
    exp = np.exp(terms - top)
    lse = top + np.log(exp.sum(axis=0))
    share = exp / exp.sum(axis=0)  # d lse / d term
    value, slope = _huber(lse - log_loss, HUBER_DELTA)
    g = weights * slope
    grad = np.array([(g * share[0]).sum(), (g * share[1]).sum(), (g * share[2]).sum(),
                     -(g * share[0] * log_n).sum(), -(g * share[1] * log_d).sum()])
    return float((weights * value).sum()), grad


def _fit_approach3(points: list[Point], starts: list[tuple[float, ...]], weights: np.ndarray | None = None
                   ) -> np.ndarray:
    log_n = np.log([p.params for p in points])
    log_d = np.log([p.tokens for p in points])
    log_loss = np.log([p.loss for p in points])
    weights = np.ones(len(points)) if weights is None else weights
    best, best_value = None, math.inf
    for start in starts:
        result = minimize(_approach3_objective, np.array(start, dtype=float), jac=True, method="L-BFGS-B",
                          args=(log_n, log_d, log_loss, weights),
                          bounds=[(-20, 60), (-20, 60), (-10, 10), (0.0, 3.0), (0.0, 3.0)])
        if result.fun < best_value:
            best, best_value = result.x, result.fun
    return best


def _approach3_constants(theta: np.ndarray) -> dict[str, float]:
    log_a, log_b, log_e, a, b = theta
    return {"E": float(math.exp(log_e)), "A": float(math.exp(log_a)), "B": float(math.exp(log_b)),
            "a": float(a), "b": float(b)}


def approach3(points: list[Point]) -> dict[str, float]:
    """L(N, D) = E + A/N^a + B/D^b fitted with the Huber loss on log-loss from every start
    of a grid (the best fit kept), as Chinchilla's approach 3."""
    if len(points) < 5:
        raise PastureError(f"approach 3 fits 5 constants and needs at least 5 points; found {len(points)}")
    return _approach3_constants(_fit_approach3(points, APPROACH3_STARTS))


def predicted_loss(law: dict[str, float], params: float, tokens: float) -> float:
    return law["E"] + law["A"] / params ** law["a"] + law["B"] / tokens ** law["b"]


def approach3_optimum(law: dict[str, float], flops: float) -> dict[str, float]:
    """The (N, D) minimising L(N, D) under 6·N·D = C (Chinchilla eq. 4) and its loss."""
    a, b = law["a"], law["b"]
    g = (a * law["A"] / (b * law["B"])) ** (1 / (a + b))
    params = g * (flops / 6) ** (b / (a + b))
    tokens = (flops / 6) / params
    return {"flops": flops, "params": params, "tokens": tokens, "loss": predicted_loss(law, params, tokens)}


# ---------------------------------------------------------------- uncertainty


def _resample(points: list[Point], rng: np.random.Generator) -> list[Point]:
    """Points drawn with replacement within each budget (each budget keeps its count)."""
    out = []
    for group in by_budget(points).values():
        out.extend(group[i] for i in rng.integers(0, len(group), len(group)))
    return out


def _spread(samples: list[float]) -> dict[str, Any]:
    values = np.asarray(samples, dtype=float)
    return {"std": float(values.std(ddof=1)), "ci80": [float(np.percentile(values, 10)), float(np.percentile(values, 90))],
            "samples": int(len(values))}


def fit_all(points: list[Point], bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """Both approaches, each with bootstrap uncertainties (`uncertainty`: std and 80%
    interval of each constant over refits on points resampled within each budget)."""
    try:
        result2 = approach2(points)
    except PastureError as e:  # approach 3 still fits; say why approach 2 could not
        result2 = {"error": str(e), "optimal": [m for g in by_budget(points).values() if (m := isoflop_minimum(g))]}
    theta = _fit_approach3(points, APPROACH3_STARTS)
    result3 = _approach3_constants(theta)
    rng = np.random.default_rng(seed)
    draws2: dict[str, list[float]] = defaultdict(list)
    draws3: dict[str, list[float]] = defaultdict(list)
    for _ in range(bootstrap):
        sample = _resample(points, rng)
        if "error" not in result2:
            try:
                refit = approach2(sample)
            except PastureError:  # a resample with too few distinct sizes in a budget has no parabola
                refit = {}
            for key in ("alpha_tokens", "A_tokens", "alpha_params", "A_params"):
                if key in refit:
                    draws2[key].append(refit[key])
        # from the full fit's optimum and a few grid starts: a resample rarely moves far
        for key, value in _approach3_constants(_fit_approach3(sample, [tuple(theta), *APPROACH3_STARTS[::61]])).items():
            draws3[key].append(value)
    if bootstrap >= 2 and "error" not in result2:
        result2["uncertainty"] = {k: _spread(v) for k, v in draws2.items() if len(v) >= 2}
    if bootstrap >= 2:
        result3["uncertainty"] = {k: _spread(v) for k, v in draws3.items()}
    return {"approach2": result2, "approach3": result3, "points": len(points), "budgets": len(by_budget(points)),
            "bootstrap": bootstrap}


# ---------------------------------------------------------------- forecasts


def compute_optimal(fit: dict[str, Any], flops: float) -> dict[str, Any]:
    """The compute-optimal tokens, parameters and loss at `flops` from a fit file's laws."""
    a2, a3 = fit["approach2"], fit["approach3"]
    result: dict[str, Any] = {"flops": flops, "approach3": approach3_optimum(a3, flops)}
    if "error" in a2:
        result["approach2"] = {"error": a2["error"]}
    else:
        tokens = a2["A_tokens"] * flops ** a2["alpha_tokens"]
        params = a2["A_params"] * flops ** a2["alpha_params"]
        result["approach2"] = {"tokens": tokens, "params": params, "loss": predicted_loss(a3, params, tokens)}
    return result


def fit_linear_in_log_compute(flops: Iterable[float], values: Iterable[float]) -> tuple[float, float]:
    """(intercept, slope) of value = intercept + slope·log10(C): Llama 3's first stage."""
    slope, intercept = np.polyfit(np.log10(list(flops)), list(values), 1)
    return float(intercept), float(slope)


def sigmoid_accuracy(nll: np.ndarray | float, chance: float, steepness: float, midpoint: float) -> np.ndarray:
    """Accuracy falling from 1 to `chance` as the correct answer's NLL grows past `midpoint`."""
    return chance + (1 - chance) / (1 + np.exp(steepness * (np.asarray(nll) - midpoint)))


def fit_sigmoid(nll: Iterable[float], accuracy: Iterable[float], chance: float) -> tuple[float, float]:
    """(steepness, midpoint) of Llama 3's second stage, accuracy as a sigmoid of NLL, by least squares."""
    x, y = np.asarray(list(nll), float), np.asarray(list(accuracy), float)

    def loss(theta: np.ndarray) -> float:
        return float(((sigmoid_accuracy(x, chance, *theta) - y) ** 2).sum())

    starts = [(k, m) for k in (0.5, 2.0, 8.0) for m in np.percentile(x, [10, 50, 90])]
    best = min((minimize(loss, np.array(s), method="Nelder-Mead") for s in starts), key=lambda r: r.fun)
    return float(best.x[0]), float(best.x[1])


def downstream_forecast(rows: list[dict[str, Any]], task: str, flops: float, chance: float,
                        nll_key: str = "nll", acc_key: str = "acc") -> dict[str, Any]:
    """Llama 3's two-stage forecast of one task at `flops` from the sweep's evaluated points:
    the correct answer's normalised NLL linear in log compute, then accuracy a sigmoid of that NLL."""
    nll_name, acc_name = f"{task}/{nll_key}", f"{task}/{acc_key}"
    rows = [r for r in rows if nll_name in r and acc_name in r]
    if len({r["flops"] for r in rows}) < 2:
        raise PastureError(f"the downstream forecast needs points at 2+ budgets carrying {nll_name!r} and "
                           f"{acc_name!r} (from `pasture scaling sweep --eval-tasks {task}`); found {len(rows)} points")
    intercept, slope = fit_linear_in_log_compute([r["flops"] for r in rows], [r[nll_name] for r in rows])
    steepness, midpoint = fit_sigmoid([r[nll_name] for r in rows], [r[acc_name] for r in rows], chance)
    nll = intercept + slope * math.log10(flops)
    return {"task": task, "flops": flops, "nll": nll, "accuracy": float(sigmoid_accuracy(nll, chance, steepness, midpoint)),
            "nll_vs_log10_flops": {"intercept": intercept, "slope": slope},
            "accuracy_vs_nll": {"chance": chance, "steepness": steepness, "midpoint": midpoint}, "points": len(rows)}

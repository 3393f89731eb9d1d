"""Scaling laws: fits recover known constants, the paper's numbers, and a real sweep."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pasture.cli import main
from pasture.scaling.laws import (Point, approach2, approach3, approach3_optimum, compute_optimal,
                                  downstream_forecast, fit_all, isoflop_minimum, predicted_loss, sigmoid_accuracy)
from pasture.scaling.sweep import SweepConfig, batch_tokens, model_shape, plan_points, sweep
from pasture.train.metrics import read_metrics
from token_data import write_progressions

# Chinchilla's published approach-3 fit (Hoffmann et al. 2022, eq. 10)
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "a": 0.34, "b": 0.28}
BUDGETS = [1e18, 3e18, 1e19, 3e19, 1e20, 3e20]


def synthetic_points(noise: float, seed: int = 0) -> list[Point]:
    """Nine sizes per budget spread x8 either side of the law's optimum, losses with
    multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    points = []
    for flops in BUDGETS:
        centre = approach3_optimum(CHINCHILLA, flops)["params"]
        for factor in np.geomspace(1 / 8, 8, 9):
            params = centre * factor
            tokens = flops / (6 * params)
            loss = predicted_loss(CHINCHILLA, params, tokens) * math.exp(rng.normal(0, noise))
            points.append(Point(flops, params, tokens, loss))
    return points


def test_approach3_recovers_chinchilla_constants_from_noisy_points():
    law = approach3(synthetic_points(noise=0.002))
    assert law["E"] == pytest.approx(1.69, abs=0.03)
    assert law["a"] == pytest.approx(0.34, abs=0.02) and law["b"] == pytest.approx(0.28, abs=0.02)
    # A and B trade off against the exponents; the losses they predict must agree
    for n, d in [(1e8, 1e10), (1e10, 1e12)]:
        assert predicted_loss(law, n, d) == pytest.approx(predicted_loss(CHINCHILLA, n, d), rel=0.005)


def test_approach2_recovers_optimal_token_exponent_and_bootstrap_covers_it():
    # the law's compute-optimal D*(C) grows as C^(a/(a+b)) with coefficient from Chinchilla eq. 4
    alpha = CHINCHILLA["a"] / (CHINCHILLA["a"] + CHINCHILLA["b"])
    coefficient = approach3_optimum(CHINCHILLA, 1.0)["tokens"]
    fit = fit_all(synthetic_points(noise=0.002, seed=1), bootstrap=30)
    a2 = fit["approach2"]
    assert a2["alpha_tokens"] == pytest.approx(alpha, abs=0.02)
    assert a2["alpha_params"] == pytest.approx(1 - alpha, abs=0.02)
    assert a2["alpha_tokens"] + a2["alpha_params"] == pytest.approx(1.0, abs=1e-9)  # N* = C / (6 D*)
    assert a2["A_tokens"] * 1e20 ** a2["alpha_tokens"] == pytest.approx(coefficient * 1e20 ** alpha, rel=0.1)
    lo, hi = a2["uncertainty"]["alpha_tokens"]["ci80"]
    assert lo < a2["alpha_tokens"] < hi and a2["uncertainty"]["alpha_tokens"]["std"] > 0
    assert fit["approach3"]["uncertainty"]["a"]["std"] > 0
    assert len(a2["optimal"]) == len(BUDGETS)


def test_isoflop_minimum_is_the_parabola_vertex():
    x = np.log([1e9, 2e9, 4e9, 8e9])
    losses = 0.5 * (x - math.log(3e9)) ** 2 + 2.0
    m = isoflop_minimum([Point(6e18, 6e18 / (6 * math.exp(xi)), math.exp(xi), li) for xi, li in zip(x, losses)])
    assert m["tokens"] == pytest.approx(3e9, rel=1e-6) and m["loss"] == pytest.approx(2.0, abs=1e-9)
    assert m["params"] == pytest.approx(6e18 / (6 * 3e9), rel=1e-6)
    assert m["inside_sampled_range"]
    below = np.log([1e8, 2e8, 4e8])  # every size on one side of the optimum
    shifted = isoflop_minimum([Point(6e18, 1.0, math.exp(xi), 0.5 * (xi - math.log(3e9)) ** 2 + 2.0) for xi in below])
    assert shifted["tokens"] == pytest.approx(3e9, rel=1e-6) and not shifted["inside_sampled_range"]
    # a budget whose loss falls steadily has no interior minimum and is left out
    assert isoflop_minimum([Point(1, 1, d, 5 - d) for d in (1.0, 2.0, 3.0)]) is None


def test_llama3_published_power_law_and_its_rounding():
    """Llama 3 §3.2.1 prints (alpha, A) = (0.53, 0.29) and 3.8e25 FLOPs -> 16.55T tokens.
    With the printed constants the law gives 10.5T; 16.55T needs alpha = 0.5378, which
    rounds to 0.54: the printed 0.53 is truncated (or A was rounded too)."""
    fit = {"approach2": {"A_tokens": 0.29, "alpha_tokens": 0.53, "A_params": 1.0, "alpha_params": 0.47},
           "approach3": CHINCHILLA}
    stated = compute_optimal(fit, 3.8e25)["approach2"]["tokens"]
    assert stated == pytest.approx(10.5e12, rel=0.01)
    needed = math.log(16.55e12 / 0.29) / math.log(3.8e25)
    assert needed == pytest.approx(0.5378, abs=5e-5)
    # and 6ND does not turn 16.55T tokens at 3.8e25 FLOPs into the paper's 402B parameters
    assert 3.8e25 / (6 * 16.55e12) == pytest.approx(383e9, rel=0.01)


def test_downstream_forecast_recovers_linear_and_sigmoid_stages():
    flops = np.geomspace(1e18, 1e22, 12)
    nll = 3.0 - 0.4 * np.log10(flops)  # stage 1: NLL linear in log compute
    acc = sigmoid_accuracy(nll, 0.25, 6.0, -4.5)  # stage 2: accuracy a sigmoid of NLL
    rows = [{"flops": float(c), "arc_challenge/nll": float(n), "arc_challenge/acc": float(a)}
            for c, n, a in zip(flops, nll, acc)]
    out = downstream_forecast(rows, "arc_challenge", 3.8e25, chance=0.25)
    assert out["nll_vs_log10_flops"]["slope"] == pytest.approx(-0.4, abs=1e-9)
    assert out["accuracy_vs_nll"]["steepness"] == pytest.approx(6.0, rel=1e-3)
    assert out["accuracy_vs_nll"]["midpoint"] == pytest.approx(-4.5, abs=1e-3)
    assert out["nll"] == pytest.approx(3.0 - 0.4 * math.log10(3.8e25), abs=1e-9)
    assert out["accuracy"] == pytest.approx(float(sigmoid_accuracy(out["nll"], 0.25, 6.0, -4.5)), abs=1e-4)


def test_fit_and_forecast_commands_write_the_documented_files(tmp_path, capsys):
    points = tmp_path / "points.jsonl"
    points.write_text("".join(json.dumps({"flops": p.flops, "params": p.params, "tokens": p.tokens, "loss": p.loss,
                                          "note": "extra keys allowed"}) + "\n" for p in synthetic_points(0.002)))
    out = tmp_path / "fit" / "FIT.json"
    assert main(["scaling", "fit", str(points), "--out", str(out), "--bootstrap", "10"]) == 0
    fit = json.loads(out.read_text())
    assert set(fit["approach2"]) >= {"alpha_tokens", "A_tokens", "alpha_params", "A_params", "optimal", "uncertainty"}
    assert set(fit["approach3"]) >= {"E", "A", "B", "a", "b", "uncertainty"}
    assert (tmp_path / "fit" / "FIT-isoflops.png").stat().st_size > 10_000
    assert (tmp_path / "fit" / "FIT-tokens.png").stat().st_size > 10_000
    capsys.readouterr()
    assert main(["scaling", "forecast", "--flops", "1e21", "--fit", str(out)]) == 0
    forecast = json.loads(capsys.readouterr().out)
    a2 = fit["approach2"]
    assert forecast["approach2"]["tokens"] == pytest.approx(a2["A_tokens"] * 1e21 ** a2["alpha_tokens"])
    assert forecast["approach3"]["params"] * forecast["approach3"]["tokens"] * 6 == pytest.approx(1e21)
    # a points file without a required key is a one-line error
    (tmp_path / "bad.jsonl").write_text('{"flops": 1, "params": 2, "tokens": 3}\n')
    assert main(["scaling", "fit", str(tmp_path / "bad.jsonl"), "--out", str(out)]) == 2
    assert "lacks loss" in capsys.readouterr().err


def test_recipe_follows_size_and_budget():
    assert batch_tokens(6e18, 256) == 2 ** 18 and batch_tokens(1e22, 256) == 2 ** 22  # Llama 3's 250K and 4M
    assert model_shape(128) == {"dim": 128, "n_heads": 4, "n_kv_heads": 2, "n_layers": 4}  # the tiny preset
    cfg = SweepConfig(data=[], out=Path("unused"), budgets=[1e13], widths=[32, 64, 128])
    plans = plan_points(cfg, 4096)
    assert [p["width"] for p in plans] == [32, 64, 128]
    assert all(p["batch_tokens"] == 2048 for p in plans)
    assert plans[0]["lr"] > plans[1]["lr"] > plans[2]["lr"]  # larger models, lower peak LR
    for p in plans:  # tokens x 6 x params lands on the budget within one step's rounding
        assert abs(6 * p["params"] * p["steps"] * p["batch_tokens"] / 1e13 - 1) < 6 * p["params"] * p["batch_tokens"] / 1e13


def test_sweep_runs_points_through_pretrain_and_skips_finished_ones(tmp_path):
    data = write_progressions(tmp_path / "tokens", vocab=64, train_docs=200, val_docs=20, max_len=120)
    cfg = SweepConfig(data=[str(data)], out=tmp_path / "sweep", budgets=[1e9, 2e9], widths=[16, 32],
                      seq_len=64, batch_tokens=256, min_steps=10, eval_batches=2, progress=False,
                      overrides=["train.threads=1"])
    rows = sweep(cfg, log=lambda _: None)
    assert len(rows) == 4
    lines = [json.loads(x) for x in cfg.points_file.read_text().splitlines()]
    assert lines == rows
    for row in rows:
        assert row["tokens"] == row["steps"] * 256 and row["flops_actual"] == 6 * row["params"] * row["tokens"]
        assert abs(row["flops_actual"] / row["flops"] - 1) < 0.25 and row["loss"] > 0
        assert "matmul parameters" in row["params_convention"]
        train = read_metrics(row["run_dir"], "train")
        lrs = [r["lr"] for r in train]
        assert max(lrs) == pytest.approx(row["lr"], rel=1e-3) and train[-1]["step"] == row["steps"]
        # cosine to 0.1x peak: the last step's rate sits just above the floor
        assert row["lr"] * 0.1 <= lrs[-1] < row["lr"] * 0.11
        assert all(r["batch_size"] * r["seq_len"] == 256 for r in train)
    again = sweep(cfg, log=lambda _: None)
    assert again == rows and len(cfg.points_file.read_text().splitlines()) == 4

"""benchmarks/convergence.py's table from metrics records (the GPU runs themselves are not tested here)."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "convergence.py"
spec = importlib.util.spec_from_file_location("benchmark_convergence", SCRIPT)
convergence = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look the module up
spec.loader.exec_module(convergence)


def records(losses, tokens_per_s, val_loss=None, mfu=None):
    train = [{"kind": "train", "step": i + 1, "loss": loss, "tokens_per_s": tps, "mfu": mfu, "memory_gib": 10.0 + i}
             for i, (loss, tps) in enumerate(zip(losses, tokens_per_s))]
    return train + ([{"kind": "val", "step": len(losses), "val_loss": val_loss}] if val_loss is not None else [])


def test_rows_compare_the_last_steps_with_the_baseline_and_take_the_second_half_median():
    base = convergence.RunResult("bf16", 0, 60.0, records([5.0, 4.0, 3.0, 2.0], [1, 100, 200, 300], 2.5, 0.5))
    other = convergence.RunResult("float8", 0, 50.0, records([5.5, 4.1, 2.8, 2.1], [1, 150, 250, 350], 2.6))
    row = convergence.summarize(other, base, tail=2)
    assert row["mean_abs_diff"] == pytest.approx((0.2 + 0.1) / 2)
    assert row["tail_steps"] == 2 and row["final_loss"] == 2.1 and row["val_loss"] == 2.6
    assert row["tokens_per_s"] == 300  # median of steps 3 and 4: compile and warm-up steps left out
    assert row["peak_gib"] == pytest.approx(13.0) and row["mfu"] is None and "plan_gib" not in row
    assert "mean_abs_diff" not in convergence.summarize(base, base)


def test_table_reports_failed_variants_and_report_round_trips(tmp_path):
    base = convergence.RunResult("bf16", 0, 60.0, records([5.0, 3.0], [100, 200], 2.9, 0.61), planned_gib=10.0)
    failed = convergence.RunResult("float8", 2, 1.5, [], "pasture: error: unknown key train.float8")
    table = convergence.write_report([base, failed], tmp_path, "test")
    lines = table.splitlines()
    assert lines[2].startswith("| bf16 | 2 | 3.0000 | (baseline) | 2.9000 | 200 | 61.0% | 11.0 | 10.0 | 1.10 | 60 | ok |")
    assert lines[3] == ("| float8 | 0 | - | - | - | - | - | - | - | - | 2 | failed (2): pasture: error: unknown key "
                        "train.float8 |")
    assert (tmp_path / "losses.png").stat().st_size > 0
    assert (tmp_path / "convergence.md").read_text().endswith(table + "\n")
    again = convergence.load_results([tmp_path / "metrics.json"])
    assert [r.variant for r in again] == ["bf16", "float8"] and again[0].records == base.records

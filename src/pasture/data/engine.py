"""Where curation tasks run: local processes, or a Ray cluster.

A phase is a picklable object whose `run(task)` takes a task dataclass, writes its outputs
and returns a small result dataclass of JSON-able fields. `run_tasks` writes a done-marker
(holding that result) atomically after each task, and skips tasks whose marker exists, so
a crashed run restarts where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tqdm import tqdm

from pasture.errors import PastureError


def write_json_atomic(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


_Task = TypeVar("_Task", contravariant=True)
_Result = TypeVar("_Result", covariant=True)
TaskT = TypeVar("TaskT")
ResultT = TypeVar("ResultT")


class Phase(Protocol[_Task, _Result]):
    """One phase of a pipeline: `run` does one task; `result_type` rebuilds a result from its done-marker."""

    result_type: type

    def run(self, task: _Task) -> _Result: ...


def _run_and_mark(fn: Callable[[Any], Any], arg: Any, marker: str) -> Any:
    result = fn(arg)
    write_json_atomic(Path(marker), dataclasses.asdict(result))
    return result


class LocalEngine:
    """A pool of worker processes (or the calling process when there is one worker)."""

    def __init__(self, workers: int = 0, progress: bool = True) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.progress = progress
        self._pool = None

    def map(self, calls: list[tuple[Callable, Any, str]], desc: str) -> list[Any]:
        if self.workers == 1 or len(calls) == 1:
            return [_run_and_mark(*c) for c in tqdm(calls, desc=desc, unit="task", leave=False, disable=not self.progress)]
        if self._pool is None:
            # spawn, not fork: the driver may hold threads (Ray, tqdm) that fork would copy mid-state;
            # a worker that dies raises BrokenProcessPool here instead of hanging the run
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        pending = [self._pool.submit(_run_and_mark, *c) for c in calls]
        return [p.result() for p in tqdm(pending, desc=desc, unit="task", leave=False, disable=not self.progress)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class RayEngine:
    """The same tasks as Ray remote functions; files must be on storage every node sees."""

    def __init__(self, workers: int = 0, address: str = "", progress: bool = True) -> None:
        self.progress = progress
        try:
            import ray
        except ImportError:
            raise PastureError("engine.kind = 'ray' needs Ray: pip install 'pasture[curate]'") from None
        self._ray = ray
        self._started_here = not ray.is_initialized()
        if self._started_here:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
        self._remote = ray.remote(num_cpus=1)(_run_and_mark)

    def map(self, calls: list[tuple[Callable, Any, str]], desc: str) -> list[Any]:
        refs = [self._remote.remote(*c) for c in calls]
        results = {}
        remaining = list(refs)
        with tqdm(total=len(refs), desc=desc, unit="task", leave=False, disable=not self.progress) as bar:
            while remaining:
                done, remaining = self._ray.wait(remaining, num_returns=1)
                for ref in done:
                    results[ref] = self._ray.get(ref)
                bar.update(len(done))
        return [results[r] for r in refs]

    def close(self) -> None:
        if self._started_here:
            self._ray.shutdown()


def make_engine(kind: str, workers: int = 0, ray_address: str = "", progress: bool = True) -> LocalEngine | RayEngine:
    return RayEngine(workers, ray_address, progress) if kind == "ray" else LocalEngine(workers, progress)


def run_tasks(engine: LocalEngine | RayEngine, phase: Phase[TaskT, ResultT], tasks: dict[str, TaskT], done_dir: Path,
              desc: str) -> dict[str, ResultT]:
    """Run `phase.run(task)` for each named task not yet done; returns every task's result, old and new."""
    results: dict[str, Any] = {}
    calls = []
    for name, task in tasks.items():
        marker = done_dir / f"{name}.json"
        if marker.exists():
            results[name] = phase.result_type(**json.loads(marker.read_text()))
        else:
            calls.append((name, (phase.run, task, str(marker))))
    if calls:
        for (name, _), result in zip(calls, engine.map([c for _, c in calls], desc)):
            results[name] = result
    return {name: results[name] for name in tasks}

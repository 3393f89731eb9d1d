"""Run metrics: `metrics.jsonl` (one JSON object per line), TensorBoard when installed, MFU.

Every record has `kind` ("train", "val", "event") and `step`. On resume, records past
the resumed step are dropped first, so the file always reads as one clean run.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

# Dense bf16 tensor-core peak FLOP/s per GPU, by a substring of the device name.
PEAK_BF16_FLOPS = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
]


def peak_flops(device: torch.device) -> float | None:
    """The bf16 peak of a CUDA device from the table above; None on CPU or an unknown GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_FLOPS:
        if key in name:
            return peak
    return None


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int | None = None, tensorboard: bool = True,
                 write: bool = True) -> None:
        """`write=False` (every rank but the first of a distributed run) records nothing."""
        self.path = Path(run_dir) / "metrics.jsonl"
        self.write = write
        if not write:
            self._file, self._tb = None, None
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional; warnings shows this once per process
                warnings.warn("log.tensorboard=true but tensorboard is not installed, so this run writes "
                              "metrics.jsonl only: pip install 'pasture[tensorboard]', or set "
                              "log.tensorboard=false", stacklevel=2)

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if record.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def log(self, kind: str, step: int, **values: Any) -> None:
        if not self.write:
            return
        record = {"kind": kind, "step": step, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if not self.write:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or record.get("kind") == kind:
            records.append(record)
    return records

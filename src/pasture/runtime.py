"""Where a process runs: its device, its place in a torch.distributed job, and what it used.

The ground floor every stage stands on (data scoring, training, evaluation, serving):
it imports nothing of pasture but the error type, so any package may import it.
"""

from __future__ import annotations

import os
import resource
from contextlib import AbstractContextManager

import torch
import torch.distributed as dist

from pasture.errors import PastureError


def resolve_device(name: str) -> torch.device:
    """The device to run on ("auto", "cpu", "cuda", "cuda:N"); under torchrun, each process
    takes the GPU of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PastureError(f"device {name!r} asked for but no CUDA device is available; use auto or cpu")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def is_distributed() -> bool:
    """Whether this process is part of an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun, even as its only process (then the
    run takes the multi-GPU code path: FSDP2 with its mixed precision); (rank, world size)."""
    if not is_distributed() and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return rank_and_world()


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(value: torch.Tensor, *groups) -> torch.Tensor:
    """Sum `value` in place over each process group in turn (a None group is skipped, so
    the same call works in a single process)."""
    for group in groups:
        if group is not None:
            dist.all_reduce(value, group=group)
    return value


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Mixed precision in `dtype` over fp32 weights; plain fp32 when `dtype` is None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory in GiB (2**30 bytes, the unit of `pasture plan`): allocated on the GPU,
    the process's resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux

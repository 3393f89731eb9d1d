"""Training checkpoints: atomic, self-validating, resumable, reshardable.

Layout of one checkpoint (see docs/formats.md):

    <run>/checkpoints/step_00000100/
        .metadata, __*_*.distcp     torch.distributed.checkpoint: {"model", "optim"}
        train_state_rank00000.pt    step, scheduler, loader and RNG state of that rank
        config.json                 {"format": "pasture-checkpoint", "model": ModelConfig, "recipe": {...}}
        COMPLETE                    JSON: every file's size; written last

A checkpoint is written into `step_XXXXXXXX.tmp/` and renamed into place only once
everything, COMPLETE included, is on disk, so a crash mid-write never leaves a folder
that looks valid. Loading checks COMPLETE against the files; a damaged newest
checkpoint is skipped for the one before it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from pasture.errors import PastureError
from pasture.model import FINAL_MODEL_DIR
from pasture.model.config import ModelConfig
from pasture.model.convert import write_checkpoint

CHECKPOINT_DIR = "checkpoints"
# DCP warns on every single-process save/load; single-process is a supported use here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
_STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointCorrupt(PastureError):
    """A checkpoint folder that is incomplete or damaged."""


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != "COMPLETE"}


def validate(folder: Path) -> None:
    """Raise CheckpointCorrupt unless every file COMPLETE lists is present with its size."""
    marker = folder / "COMPLETE"
    if not marker.exists():
        raise CheckpointCorrupt(f"{folder} has no COMPLETE marker (interrupted while saving)")
    try:
        listed = json.loads(marker.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        raise CheckpointCorrupt(f"{marker} is damaged") from None
    actual = _file_sizes(folder)
    for name, size in listed.items():
        if actual.get(name) != size:
            raise CheckpointCorrupt(f"{folder / name} is missing or truncated ({actual.get(name)} != {size} bytes)")


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every finished-looking checkpoint, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_valid(run_dir: Path, log=print) -> Path | None:
    """The newest checkpoint that validates, warning about each damaged one skipped."""
    for _, folder in reversed(list_checkpoints(run_dir)):
        try:
            validate(folder)
            return folder
        except CheckpointCorrupt as e:
            log(f"warning: skipping checkpoint: {e}")
    return None


def _model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model)


def _rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    train_state: dict[str, Any],
    model_config: ModelConfig,
    recipe: dict[str, Any] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write a checkpoint for `step` atomically; every rank calls this."""
    Checkpointer(asynchronous=False).save(run_dir, step, model, optimizer, train_state, model_config, recipe, keep_last)
    return step_dir(run_dir, step)


class Checkpointer:
    """Saves checkpoints, optionally in the background (`dcp.async_save`).

    An asynchronous save copies the state to CPU, returns, and writes while training goes
    on. The loop asks every step whether this rank's write is done (`written`), agrees on
    it across ranks, and finishes the folder (COMPLETE written, renamed into place) at the
    first step where every rank's write is done, so a crash after that loses nothing.
    `save` and `wait` also finish a pending save. Background writes use their own gloo
    process group so they never interleave with the training collectives.
    """

    def __init__(self, asynchronous: bool = False) -> None:
        self.asynchronous = asynchronous
        self._pending: tuple[Any, ...] | None = None
        self._group = None

    def save(self, run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
             train_state: dict[str, Any], model_config: ModelConfig, recipe: dict[str, Any] | None = None,
             keep_last: int | None = None) -> None:
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        self.wait()
        rank, world = _rank_and_world()
        final = step_dir(run_dir, step)
        tmp = final.with_name(final.name + ".tmp")
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        state: dict[str, Any] = {"model": _model_state(model)}
        if optimizer is not None:
            state["optim"] = get_optimizer_state_dict(model, optimizer)
        future = None
        if self.asynchronous and world > 1:
            if self._group is None:
                self._group = dist.new_group(backend="gloo")
            future = dcp.async_save(state, checkpoint_id=str(tmp), process_group=self._group)
        else:
            dcp.save(state, checkpoint_id=str(tmp))
        torch.save({**train_state, "rng": _rng_state(), "world_size": world}, tmp / f"train_state_rank{rank:05d}.pt")
        self._pending = (future, run_dir, step, tmp, final, world, model_config, recipe, keep_last)
        if future is None:
            self.wait()

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def written(self) -> bool:
        """Whether this rank has nothing left to write (no save pending, or its write is done)."""
        return self._pending is None or self._pending[0] is None or self._pending[0].done()

    def wait(self) -> Path | None:
        """Finish the last save (waiting for its background write); its folder, or None.
        Every rank calls it at the same step (it has barriers)."""
        if self._pending is None:
            return None
        future, run_dir, step, tmp, final, world, model_config, recipe, keep_last = self._pending
        self._pending = None
        if future is not None:
            future.result()
        _barrier()
        if _rank_and_world()[0] == 0:
            (tmp / "config.json").write_text(json.dumps(
                {"format": "pasture-checkpoint", "step": step, "world_size": world,
                 "model": model_config.to_dict(), "recipe": recipe or {}}, indent=2, default=str) + "\n")
            _seal(tmp, {"step": step})
            _replace_folder(tmp, final)
            if keep_last:
                for _, old in list_checkpoints(run_dir)[:-keep_last]:
                    shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final


def load(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore model (and optimizer) in place from `folder`; returns this rank's train state.

    The model and optimizer may be sharded differently from when the checkpoint was
    saved: torch.distributed.checkpoint reshards on load.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    validate(folder)
    rank, world = _rank_and_world()
    state: dict[str, Any] = {"model": _model_state(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    try:
        dcp.load(state, checkpoint_id=str(folder))
    except Exception as e:  # DCP surfaces many error types for damaged files
        raise CheckpointCorrupt(f"cannot read {folder}: {type(e).__name__}: {e}") from None
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])
    own = folder / f"train_state_rank{rank:05d}.pt"
    if not own.exists():  # a different world size: rank 0's counters still apply
        own = folder / "train_state_rank00000.pt"
    train_state = torch.load(own, map_location="cpu", weights_only=False)
    train_state["resharded"] = train_state.get("world_size", 1) != world
    if not train_state["resharded"]:
        _set_rng_state(train_state["rng"])
    return train_state


def load_model(folder: Path, model: torch.nn.Module) -> None:
    """Restore only the model weights from a checkpoint or weights folder, resharding as needed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    validate(folder)
    state = {"model": _model_state(model)}
    try:
        dcp.load(state, checkpoint_id=str(folder))
    except Exception as e:
        raise CheckpointCorrupt(f"cannot read {folder}: {type(e).__name__}: {e}") from None
    set_model_state_dict(model, state["model"])


def save_weights(folder: Path, model: torch.nn.Module, model_config: ModelConfig) -> Path:
    """Model weights alone, written shard by shard by every rank, in the checkpoint layout
    (so `read_model_state` opens it). Atomic like a checkpoint: written beside the folder,
    marked COMPLETE, then renamed into place, so a crash never leaves a half folder."""
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    rank, world = _rank_and_world()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    dcp.save({"model": _model_state(model)}, checkpoint_id=str(tmp))
    _barrier()
    if rank == 0:
        (tmp / "config.json").write_text(json.dumps(
            {"format": "pasture-checkpoint", "world_size": world, "model": model_config.to_dict()}, indent=2) + "\n")
        _seal(tmp, {})
        _replace_folder(tmp, folder)
    _barrier()
    return folder


def _seal(folder: Path, record: dict[str, Any]) -> None:
    """fsync every file, then write COMPLETE with their sizes: the folder is now whole."""
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    (folder / "COMPLETE").write_text(json.dumps({**record, "files": _file_sizes(folder)}) + "\n")


def _replace_folder(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


@torch.no_grad()
def average_weights_into(model: torch.nn.Module, folders: list[Path]) -> None:
    """Set `model` to the mean of the weights in `folders`; each rank averages only its own shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import DTensor

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if isinstance(t, DTensor) else t

    sums: dict[str, torch.Tensor] = {}
    for folder in folders:
        state = {"model": _model_state(model)}  # the live parameters: loading overwrites them
        dcp.load(state, checkpoint_id=str(folder))
        for name, value in state["model"].items():
            sums[name] = sums.get(name, 0) + local(value).double()
    for name, value in _model_state(model).items():
        local(value).copy_(sums[name] / len(folders))


def read_config(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "config.json").read_text())


def is_run_or_checkpoint(path: Path) -> bool:
    path = Path(path)
    if (path / CHECKPOINT_DIR).is_dir():
        return True
    cfg = path / "config.json"
    if cfg.exists():
        try:
            return json.loads(cfg.read_text()).get("format") == "pasture-checkpoint"
        except json.JSONDecodeError:
            return False
    return False


def resolve(path: Path) -> Path:
    """A run folder means its newest valid checkpoint; a checkpoint folder means itself."""
    path = Path(path)
    if (path / CHECKPOINT_DIR).is_dir():
        found = latest_valid(path)
        if found is None:
            raise CheckpointCorrupt(f"run {path} has no valid checkpoint")
        return found
    return path


def transformer_prefix(folder: Path) -> str:
    """The parameter-name prefix of the Transformer in a checkpoint of a wrapped model (a reward
    model's `transformer.`), '' for a plain one: read from the checkpoint's metadata."""
    import torch.distributed.checkpoint as dcp

    for key in dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata:
        if key.startswith("model.") and key.endswith("tok_embeddings.weight"):
            return key[len("model."):-len("tok_embeddings.weight")]
    return ""


def read_model_state(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Model weights (unsharded, CPU) and config from a run or checkpoint folder, without a process group."""
    from pasture.model.llama import Transformer

    folder = resolve(path)
    validate(folder)
    config = ModelConfig.from_dict(read_config(folder)["model"])
    with torch.device("meta"):
        model = Transformer(config)
    model = model.to_empty(device="cpu")
    if config.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    import torch.distributed.checkpoint as dcp

    prefix = transformer_prefix(folder)
    state = {"model": {prefix + k: v for k, v in model.state_dict().items()}}
    try:  # no_dist: one rank reads alone (write_final_model) even inside a process group
        dcp.load(state, checkpoint_id=str(folder), no_dist=True)
    except Exception as e:
        raise CheckpointCorrupt(f"cannot read {folder}: {type(e).__name__}: {e}") from None
    weights = {k[len(prefix):]: v for k, v in state["model"].items()}
    if config.tie_embeddings:
        weights.pop("output.weight", None)
    return weights, config


# ---------------------------------------------------------------- annealing average (Llama 3 §3.4.3)


ANNEAL_DIR = "anneal"
AVERAGED_DIR = "averaged"


def save_anneal_weights(run_dir: Path, step: int, model: torch.nn.Module, model_config: ModelConfig) -> Path:
    """Keep this annealing step's weights for the final average (every rank writes its own shards)."""
    return save_weights(Path(run_dir) / ANNEAL_DIR / f"step_{step:08d}", model, model_config)


def anneal_snapshots(run_dir: Path, model_config: ModelConfig) -> list[Path]:
    """The annealing snapshots to average, each checked whole and of this model's shape."""
    folders = sorted(f for f in (Path(run_dir) / ANNEAL_DIR).glob("step_*") if not f.name.endswith(".tmp"))
    if not folders:
        raise CheckpointCorrupt(f"{run_dir}/{ANNEAL_DIR} holds no annealing snapshots to average")
    for folder in folders:
        validate(folder)
        if read_config(folder).get("model") != model_config.to_dict():
            raise CheckpointCorrupt(f"{folder} holds a different model than this run; not averaging it")
    return folders


def average_anneal_weights(run_dir: Path, model: torch.nn.Module, model_config: ModelConfig, log=print) -> Path:
    """Average the weights kept during annealing into the live model and write them to
    `averaged/`; the run's final validation then scores the averaged model."""
    out = Path(run_dir) / AVERAGED_DIR
    folders = anneal_snapshots(run_dir, model_config)
    average_weights_into(model, folders)
    save_weights(out, model, model_config)
    log(f"averaged {len(folders)} annealing checkpoints into {out}")
    return out


# ---------------------------------------------------------------- the run's final model


def write_final_model(run_dir: Path, source: Path, description: str, log=print) -> Path:
    """Write the run's final model to `RUN/model/` as a plain pasture model folder, with
    `source.json` saying which weights it holds; `pasture.model.load(RUN)` opens it.

    Rank 0 reads the finished weights folder (`averaged/` or the last checkpoint) from disk,
    so it works the same whatever the parallel layout was. Atomic: written beside, renamed.
    """
    run_dir = Path(run_dir)
    final = run_dir / FINAL_MODEL_DIR
    if _rank_and_world()[0] == 0:
        state, config = read_model_state(source)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_checkpoint(state, config, tmp, "pasture")
        (tmp / "source.json").write_text(json.dumps(
            {"weights": str(source.relative_to(run_dir)), "description": description}, indent=2) + "\n")
        _replace_folder(tmp, final)
        log(f"final model ({description}) written to {final}")
    _barrier()
    return final

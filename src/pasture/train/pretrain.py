"""`pasture pretrain RECIPE [key=value ...]`: pre-training on token shards.

Reads top to bottom: pick the device and join the process group, resolve the parallel
layout, open the packed loaders, build the runner (the model laid out over the ranks),
then hand the pre-training task to the shared loop (`pasture.train.loop`). The task
brings what is particular to pre-training: the sequence-length and batch-size ramps,
the switch to the annealing data, and the next-token objective.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pasture.model.info import num_params
from pasture.runtime import init_distributed, is_distributed, resolve_device
from pasture.train import float8, parallel
from pasture.train.loader import PackedLoader, ValidationLoader
from pasture.train.loop import LoopConfig, train
from pasture.train.recipe import PretrainRecipe, autocast_dtype, build_model_config, check_batch_shapes
from pasture.train.runner import RunnerSpec, build_runner
from pasture.train.schedule import schedule_value
from pasture.train.shards import TokenDataset
from pasture.train.task import MicroBatching, NextTokenObjective, StepBatches
from pasture.train.validation import evaluate


class PretrainTask:
    """Pre-training as a `TrainTask`: packed rows of token shards, next-token loss."""

    def __init__(self, recipe: PretrainRecipe, dp_rank: int, dp_size: int) -> None:
        self.recipe = recipe
        d, t = recipe.data, recipe.train
        self.objective = NextTokenObjective(document_mask=t.document_mask)
        self.datasets = [TokenDataset(p) for p in d.train]
        self.loader = _packed_loader(self.datasets, d.weights, d.seed, dp_rank, dp_size, d.lanes)
        self.vocab_size = max(ds.vocab_size for ds in self.datasets)
        self.anneal_loader = None
        if t.anneal_steps and d.anneal:
            anneal_sets = [TokenDataset(p) for p in d.anneal]
            self.anneal_loader = _packed_loader(anneal_sets, d.anneal_weights, d.seed + 1, dp_rank, dp_size, d.lanes)
            self.vocab_size = max(self.vocab_size, *(ds.vocab_size for ds in anneal_sets))

    def wrap_model(self, transformer: nn.Module) -> nn.Module:
        return transformer

    def next_step(self, step: int, tokens_seen: int, split: Callable[[int], MicroBatching],
                  annealing: bool = False) -> StepBatches:
        t = self.recipe.train
        seq_len = schedule_value(t.seq_len_schedule, tokens_seen, "train.seq_len_schedule") if t.seq_len_schedule else t.seq_len
        batch_size = (schedule_value(t.batch_ramp, tokens_seen, "train.batch_ramp") // seq_len) if t.batch_ramp else t.batch_size
        source = self.anneal_loader if annealing and self.anneal_loader is not None else self.loader
        cut = split(batch_size)
        batches = [source.next_batch(cut.rows, seq_len) for _ in range(cut.count)]
        return StepBatches(batches, batch_size * seq_len, seq_len, {"seq_len": seq_len, "batch_size": batch_size})

    def state_dict(self) -> dict[str, Any]:
        return {"loader": self.loader.state_dict(),
                "anneal_loader": self.anneal_loader.state_dict() if self.anneal_loader is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state["loader"])
        if self.anneal_loader is not None and state.get("anneal_loader"):
            self.anneal_loader.load_state_dict(state["anneal_loader"])

    def write_run_files(self, run_dir: Path) -> None:
        """Keep the tokenizer beside the checkpoints, so the run folder stands alone."""
        tokenizer = self.datasets[0].header.get("tokenizer") or {}
        path = Path(tokenizer.get("path", "")) if isinstance(tokenizer, dict) else Path(str(tokenizer))
        if path.is_file() and not (run_dir / "tokenizer.model").exists():
            shutil.copyfile(path, run_dir / "tokenizer.model")


def _packed_loader(datasets: list[TokenDataset], weights: list[float], seed: int, rank: int, world: int,
                   lanes: int) -> PackedLoader:
    weights = weights or [1.0] * len(datasets)
    return PackedLoader(list(zip(datasets, weights)), seed=seed, rank=rank, world_size=world, lanes=lanes)


def loop_config(recipe: PretrainRecipe) -> LoopConfig:
    """The shared loop's settings from a pre-training recipe."""
    t, c = recipe.train, recipe.checkpoint
    return LoopConfig(
        run_dir=Path(recipe.log.dir), steps=t.steps, optim=recipe.optim, anneal_steps=t.anneal_steps,
        time_budget_s=t.time_budget_s,
        resume=recipe.resume, max_bad_steps=t.max_bad_steps, max_grad_norm=t.max_grad_norm,
        grad_spike_factor=t.grad_spike_factor, checkpoint_every=c.every, keep_last=c.keep_last,
        checkpoint_final=c.final, anneal_every=c.anneal_every, async_checkpoint=recipe.parallel.async_checkpoint,
        eval_every=recipe.eval.every, benchmark_every=(recipe.eval.tasks_every or recipe.eval.every) if recipe.eval.tasks else 0,
        log_every=recipe.log.every, tensorboard=recipe.log.tensorboard,
        progress=recipe.log.progress, name="pretrain")


def pretrain(recipe: PretrainRecipe, raw_recipe: dict[str, Any] | None = None, log=print,
             benchmarks: Callable[[torch.nn.Module, int], dict[str, float]] | None = None) -> dict[str, Any]:
    """Train per `recipe`; returns a summary (final losses, steps, run folder). `benchmarks`: the
    in-loop evaluation of `eval.tasks` (the command builds it; see pasture.eval.inloop).

    Launched by torchrun with several processes, the run follows `recipe.parallel`;
    in one process it trains the whole model on one device.
    """
    t = recipe.train
    device = resolve_device(t.device)
    rank, world = init_distributed(device)
    dtype = autocast_dtype(recipe, device)
    if t.float8 != "none":
        float8.check_available(device)
        if device.type == "cuda" and not t.compile and rank == 0:
            log("warning: train.float8 without train.compile=true is slower than bf16 (only compile fuses the casts)")
    if t.threads:
        torch.set_num_threads(t.threads)
    layout = parallel.resolve_layout(recipe.parallel, world)
    seq_lens = check_batch_shapes(recipe, layout)

    # data: each data-parallel rank reads its own rows; TP/CP/PP peers read the same ones
    task = PretrainTask(recipe, layout.coordinates(rank)["dp"], layout.dp)
    val_loader = None
    if recipe.eval.every or recipe.eval.batches:
        val_set = TokenDataset(recipe.data.val or recipe.data.train[0], split="val")
        val_loader = ValidationLoader(val_set, recipe.eval.batch_size, t.seq_len, recipe.eval.batches)

    config = build_model_config(recipe, task.vocab_size)
    parallel.validate(recipe.parallel, layout, config, seq_lens=seq_lens)
    runner = build_runner(RunnerSpec(
        config, recipe.parallel, layout, device, dtype, seed=t.seed, attention_backend=recipe.model.attention_backend,
        init_from=recipe.model.init_from, float8=t.float8, compile=t.compile, micro_batch_size=t.micro_batch_size,
        loss_chunk_tokens=t.loss_chunk_tokens))
    if rank == 0:
        how = f"{layout.describe()}{', FSDP2' if layout.fsdp else ''}" if is_distributed() else "one process"
        log(f"{num_params(config):,} parameters on {device.type}: {how}")
    validate = None
    if val_loader is not None:
        validate = partial(evaluate, runner.module, val_loader, device, dtype, runner.eval_batch_loss())
    return train(task, runner, loop_config(recipe), config, raw_recipe, validate, log, benchmarks)

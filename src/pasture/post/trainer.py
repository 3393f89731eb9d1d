"""What SFT, reward modelling and DPO share on top of the training core.

The core (`pasture.train.loop.train` with a `pasture.train.runner.Runner`) owns the loop,
schedules, gradient accumulation, clipping, the step guard, metrics, checkpoints, exact
resume and the parallel layout. A post-training method brings a `PostTask`: its data as
a list of items (packed rows or preference pairs), how a micro-batch is made from items,
and its objective. `run_task` wires the two and writes the run folder:

    RUN/recipe.json, metrics.jsonl, checkpoints/step_*/   the core's
    RUN/tokenizer files                                   the model's encoder (models.save_encoder)
    RUN/data.json                                         records kept / skipped per reason
    RUN/summary.json                                      the run's result (held-out metrics)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pasture.model import ModelConfig, PRESETS, save
from pasture.model.llama import AttentionMask
from pasture.post.encode import ChatEncoder
from pasture.post.models import load_model, save_encoder
from pasture.post.recipe import PostRecipe
from pasture.runtime import init_distributed, rank_and_world, resolve_device
from pasture.train.loss import cross_entropy_sum
from pasture.train.loop import LoopConfig, train
from pasture.train.parallel import resolve_layout
from pasture.train.recipe import autocast_dtype
from pasture.train.runner import Runner, RunnerSpec, build_runner
from pasture.train.task import Batch, MicroBatching, Objective, StepBatches


def log_main(*values: Any) -> None:
    """`print` on the first rank only (every rank runs the same post-training code)."""
    if rank_and_world()[0] == 0:
        print(*values, flush=True)


class ItemStream:
    """Item indices in a seeded permutation per epoch, epoch after epoch; resumable."""

    def __init__(self, n_items: int, seed: int) -> None:
        self.n_items, self.seed, self.position = n_items, seed, 0

    def take(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            epoch, offset = divmod(self.position, self.n_items)
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
            take = min(count - len(out), self.n_items - offset)
            out.extend(int(i) for i in order[offset:offset + take])
            self.position += take
        return out


@dataclass
class PostTask:
    """A `TrainTask` over a list of items; subclasses define `make_batch` and `objective`."""

    objective: Objective
    encoder: ChatEncoder
    n_items: int
    batch_size: int
    seed: int = 0
    data_report: dict[str, Any] = field(default_factory=dict)
    dp_rank: int = 0
    dp_size: int = 1

    def __post_init__(self) -> None:
        self.stream = ItemStream(self.n_items, self.seed)

    def wrap_model(self, transformer: nn.Module) -> nn.Module:
        return transformer

    def make_batch(self, items: list[int], step_items: list[int]) -> tuple[Batch, int]:
        """One micro-batch from `items` (`step_items`: the whole step's, all ranks) and its token count."""
        raise NotImplementedError

    def seq_len(self, batch: Batch) -> int:
        return int(batch["inputs"].shape[1])

    def next_step(self, step: int, tokens_seen: int, split: Callable[[int], MicroBatching],
                  annealing: bool = False) -> StepBatches:
        cut = split(self.batch_size)
        step_items = self.stream.take(self.batch_size)
        per_rank = cut.rows * cut.count
        mine = step_items[self.dp_rank * per_rank:(self.dp_rank + 1) * per_rank]
        batches, tokens = [], 0
        for i in range(cut.count):
            batch, n = self.make_batch(mine[i * cut.rows:(i + 1) * cut.rows], step_items)
            batches.append(batch)
            tokens += n
        return StepBatches(batches, tokens=tokens * self.dp_size, seq_len=self.seq_len(batches[0]),
                           metrics={"batch_size": self.batch_size})

    def state_dict(self) -> dict[str, Any]:
        return {"post_position": self.stream.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.position = state["post_position"]

    def write_run_files(self, run_dir: Path) -> None:
        save_encoder(self.encoder, run_dir)
        (Path(run_dir) / "data.json").write_text(json.dumps(self.data_report, indent=2) + "\n")


class PlainModelView:
    """The `ModelView` of a whole model in one process (reference passes, evaluation before
    training): the same chunked loss the runner computes, so the numbers agree bit for bit."""

    def __init__(self, module: nn.Module, chunk_tokens: int = 8192) -> None:
        self.module, self.chunk_tokens = module, chunk_tokens

    def token_loss_sum(self, inputs: torch.Tensor, targets: torch.Tensor,
                       document_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.hidden_loss_sum(self.module(inputs, document_ids, return_hidden=True), targets)

    def hidden_states(self, inputs: torch.Tensor, positions: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        return self.module(inputs, positions=positions, mask=mask, return_hidden=True)

    def hidden_loss_sum(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy_sum(hidden, self.module.output.weight, targets, self.chunk_tokens, scored_only=True)


def starting_point(model_spec: str, run_dir: Path) -> tuple[nn.Module, ModelConfig, str]:
    """The model to start from (in memory, for passes before training), its config, and the
    folder the runner loads: a preset's random weights are saved once so every pass sees them."""
    model, config = load_model(model_spec)
    if model_spec in PRESETS and not Path(model_spec).exists():
        initial = run_dir / "initial"
        if rank_and_world()[0] == 0 and not (initial / "config.json").is_file():
            save(model, initial)
        return model, config, str(initial)
    return model, config, model_spec


def run_task(task: PostTask, recipe: PostRecipe, raw_recipe: dict[str, Any], model_config: ModelConfig,
             init_from: str, run_dir: Path, validate: Callable[[Runner], Callable[[], dict[str, float]]] | None = None,
             name: str = "post", log=print) -> tuple[dict[str, Any], Runner]:
    """Train `task` from `init_from` through the core; the loop's summary and the runner."""
    t = recipe.train
    device = resolve_device(t.device)
    _, world = init_distributed(device)
    if t.threads:
        torch.set_num_threads(t.threads)
    layout = resolve_layout(recipe.parallel, world)
    task.dp_rank, task.dp_size = layout.coordinates(rank_and_world()[0])["dp"], layout.dp
    spec = RunnerSpec(model_config=model_config, parallel=recipe.parallel, layout=layout, device=device,
                      autocast_dtype=autocast_dtype(recipe, device), seed=t.seed,
                      attention_backend=recipe.model.attention_backend, init_from=init_from, compile=t.compile,
                      micro_batch_size=t.micro_batch_size, loss_chunk_tokens=t.loss_chunk_tokens,
                      loss_scored_only=True)
    runner = build_runner(spec, task.wrap_model)
    c, lg = recipe.checkpoint, recipe.log
    loop = LoopConfig(run_dir=run_dir, steps=t.steps, optim=recipe.optim, resume=recipe.resume,
                      max_bad_steps=t.max_bad_steps, max_grad_norm=t.max_grad_norm,
                      grad_spike_factor=t.grad_spike_factor, checkpoint_every=c.every, keep_last=c.keep_last,
                      checkpoint_final=c.final, eval_every=lg.eval_every, log_every=lg.every,
                      tensorboard=lg.tensorboard, progress=lg.progress, name=name)
    summary = train(task, runner, loop, model_config, raw_recipe,
                    validate=validate(runner) if validate else None, log=log)
    return summary, runner


def heldout_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Record indices to train on and to hold out: the same split for the same data and seed."""
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    order = np.random.default_rng([seed, 7]).permutation(n)
    held = max(1, int(round(n * fraction)))
    return sorted(int(i) for i in order[held:]), sorted(int(i) for i in order[:held])


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    if rank_and_world()[0] == 0:
        (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")

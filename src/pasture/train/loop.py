"""The training loop every trainer shares: pre-training, SFT, reward models, DPO.

`train(task, runner, config, ...)` reads top to bottom: resume if asked, then for each
step: learning rate, the task's micro-batches, forward and backward through the runner,
clip, let the step guard skip a bad step or apply it, log, validate, checkpoint. The
annealing checkpoints are averaged at the end when asked (Llama 3 §3.4.3).

Exact resume: model, optimizer, the task's data position and RNG state are all in the
checkpoint, and the learning rate is a pure function of the step, so a run killed at
any point and resumed produces bit-identical losses on CPU.

A time budget (`time_budget_s`) makes `steps` a ceiling: at a tenth of it the loop
measures its steps and fixes how many fit in the budget (the annealing steps scale
with it), and the checkpoints carry that number, so a resumed run keeps it.
"""

from __future__ import annotations

import json
import math
import signal
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from pasture.errors import PastureError
from pasture.model.config import ModelConfig
from pasture.model.info import flops_per_token, num_params
from pasture.runtime import is_distributed, peak_memory_gib, rank_and_world
from pasture.train import checkpoint as ckpt
from pasture.train.metrics import MetricsLog, peak_flops
from pasture.train.runner import Runner, StepLoss
from pasture.train.schedule import OptimConfig, build_optimizer, learning_rate
from pasture.train.step_guard import StepGuard
from pasture.train.task import TrainTask


class TrainingDiverged(PastureError):
    """Too many consecutive steps had a non-finite loss or an exploding gradient."""


@dataclass
class LoopConfig:
    """What the loop needs to know of a recipe, whatever is trained."""

    run_dir: Path
    steps: int
    optim: OptimConfig
    anneal_steps: int = 0  # final steps: learning rate linearly to 0
    time_budget_s: float = 0.0  # fit the steps into this many seconds; `steps` is then a ceiling (0: off)
    resume: str = "never"  # never | auto | path to a checkpoint folder
    max_bad_steps: int = 5  # consecutive skipped steps before the run stops
    max_grad_norm: float = 0.0  # skip a step whose gradient norm exceeds this (0: no ceiling)
    grad_spike_factor: float = 10.0  # skip a step whose gradient norm exceeds this x the recent median (0: off)
    checkpoint_every: int = 100
    keep_last: int = 3
    checkpoint_final: bool = True
    anneal_every: int = 0  # during annealing: keep weights every N steps for averaging (0: off)
    async_checkpoint: bool = False
    final_model: bool = True  # write RUN/model/ at the end (rank 0 holds the whole model in CPU memory once)
    eval_every: int = 0
    benchmark_every: int = 0
    log_every: int = 1
    tensorboard: bool = True
    progress: bool = True
    name: str = "train"  # the progress bar's label


@dataclass
class _Counters:
    """What the loop carries from step to step (and through a checkpoint)."""

    step: int = 0
    tokens_seen: int = 0
    skipped_total: int = 0
    consecutive_bad: int = 0
    last_loss: float = float("nan")
    seconds: float = 0.0  # wall-clock of the loop so far, over every resume
    step_seconds: float = 0.0  # the part of it spent in the steps themselves (the rest: validation, checkpoints)


BUDGET_RESERVE = 0.02  # share of a time budget kept for what follows the last step (averaging, final validation)


@dataclass
class StepPlan:
    """How many steps the run takes, and how many of them anneal.

    Without a time budget these are the config's. With one, `plan_at` (a tenth of the
    ceiling, past warmup and batch ramps in the shipped recipes) is when the loop fixes
    them from the median of the recent step times plus the loop's overhead so far
    (validation, checkpoints): for warmup-stable-decay and constant schedules the
    learning rate up to that step does not depend on the total.
    """

    steps: int
    anneal_steps: int
    budget_s: float = 0.0
    planned: bool = False
    recent: deque = field(default_factory=lambda: deque(maxlen=50))

    @classmethod
    def from_config(cls, config: LoopConfig) -> "StepPlan":
        return cls(config.steps, config.anneal_steps, config.time_budget_s, planned=not config.time_budget_s)

    @property
    def plan_at(self) -> int:
        return max(20, self.steps // 10)

    @property
    def anneal_start(self) -> int:
        """The step after which the rate anneals (0-based steps at or past it are annealing steps)."""
        return self.steps - self.anneal_steps

    def observe(self, counters: _Counters, step_seconds: float) -> bool:
        """Record a step's time; True when this step fixed the plan."""
        self.recent.append(step_seconds)
        if self.planned or counters.step < self.plan_at:
            return False
        overhead_per_step = max(0.0, (counters.seconds - counters.step_seconds) / counters.step)
        per_step = statistics.median(self.recent) + overhead_per_step
        left = self.budget_s * (1 - BUDGET_RESERVE) - counters.seconds
        steps = min(self.steps, max(counters.step + 1, counters.step + int(left / per_step)))
        self.anneal_steps = min(steps - counters.step - 1, round(self.anneal_steps * steps / self.steps))
        self.steps = steps
        self.planned = True
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"planned_steps": self.steps, "planned_anneal_steps": self.anneal_steps} if self.budget_s and self.planned else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.budget_s and "planned_steps" in state:
            self.steps, self.anneal_steps, self.planned = state["planned_steps"], state["planned_anneal_steps"], True


def train(task: TrainTask, runner: Runner, config: LoopConfig, model_config: ModelConfig,
          raw_recipe: dict[str, Any] | None = None, validate: Callable[[], dict[str, float]] | None = None,
          log=print, benchmarks: Callable[[torch.nn.Module, int], dict[str, float]] | None = None) -> dict[str, Any]:
    """Train `runner`'s model on `task` per `config`; a summary (final loss, steps, run folder).

    `validate()`, when given, returns held-out metrics every `config.eval_every` steps and at the end;
    `benchmarks(model, step)` (in-loop evaluation, e.g. `pasture.eval.inloop.InLoopEval`) returns
    benchmark metrics every `config.benchmark_every` steps and at the end, logged as `eval` records.
    """
    rank, world = rank_and_world()
    run_dir = Path(config.run_dir)
    model = runner.module
    model.train()
    optimizer = build_optimizer(model, config.optim)
    guard = StepGuard(config.max_grad_norm, config.grad_spike_factor)
    counters = _Counters()
    plan = StepPlan.from_config(config)
    resume_from = find_resume(config, run_dir, log)
    if resume_from is not None:
        state = ckpt.load(resume_from, model, optimizer)
        counters = _Counters(state["step"], state["tokens_seen"], state["skipped_steps"],
                             last_loss=state.get("last_loss", float("nan")),
                             seconds=state.get("train_seconds", 0.0), step_seconds=state.get("step_seconds", 0.0))
        plan.load_state_dict(state)
        task.load_state_dict(state)
        guard.load_state_dict(state.get("guard", {}))
        log(f"resumed from {resume_from} at step {counters.step} ({counters.tokens_seen:,} tokens)")
    elif rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    runner.after_optimizer_step()  # the weights we start from, as the uninterrupted run had them
    if rank == 0:
        (run_dir / "recipe.json").write_text(json.dumps(raw_recipe or {}, indent=2, default=str) + "\n")
        task.write_run_files(run_dir)
    metrics = MetricsLog(run_dir, resume_step=counters.step if resume_from else None,
                         tensorboard=config.tensorboard and rank == 0, write=rank == 0)
    saver = ckpt.Checkpointer(asynchronous=config.async_checkpoint)
    peak = peak_flops(runner.device)
    bar = tqdm(total=plan.steps, initial=counters.step, desc=config.name, unit="step", dynamic_ncols=True,
               disable=not config.progress or rank != 0)
    with _StopRequest() as stop:
        while counters.step < plan.steps:
            started = time.perf_counter()
            lr = learning_rate(counters.step, plan.steps, config.optim, plan.anneal_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = task.next_step(counters.step, counters.tokens_seen, runner.split,
                                     annealing=counters.step >= plan.anneal_start)
            result = runner.forward_backward(batches.micro_batches, task.objective)
            grad_norm = runner.clip_gradients(config.optim.grad_clip or float("inf"))
            _apply_or_skip(result, grad_norm, optimizer, runner, guard, counters, metrics)
            optimizer.zero_grad(set_to_none=True)
            counters.step += 1
            counters.tokens_seen += batches.tokens
            if counters.consecutive_bad >= config.max_bad_steps:
                _stop_diverged(counters, metrics, bar, saver, run_dir)
            elapsed = time.perf_counter() - started
            counters.seconds += elapsed
            counters.step_seconds += elapsed
            if plan.observe(counters, elapsed):
                _announce_plan(plan, config, counters, metrics, bar, log)
            tokens_per_s = batches.tokens / elapsed
            if counters.step % config.log_every == 0 or counters.step == plan.steps:
                mfu = (flops_per_token(model_config, batches.seq_len) * tokens_per_s / (peak * world)) if peak else None
                metrics.log("train", counters.step, loss=result.loss, lr=lr, grad_norm=grad_norm,
                            tokens_per_s=tokens_per_s, mfu=mfu, **batches.metrics, tokens_seen=counters.tokens_seen,
                            skipped_steps=counters.skipped_total, memory_gib=peak_memory_gib(runner.device),
                            step_time_s=elapsed, **result.metrics)
            bar.set_postfix(loss=f"{result.loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
            bar.update(1)
            step = counters.step
            if validate is not None and config.eval_every and step % config.eval_every == 0 and step < plan.steps:
                metrics.log("val", step, **validate())
            if benchmarks is not None and config.benchmark_every and step % config.benchmark_every == 0:
                metrics.log("eval", step, **benchmarks(model, step))
            if config.anneal_every and step > plan.anneal_start and (step - plan.anneal_start) % config.anneal_every == 0:
                ckpt.save_anneal_weights(run_dir, step, model, model_config)
            stopping, written = agree_across_ranks(stop.requested, saver.written(), runner.device)
            if saver.pending and written:  # finish an async checkpoint as soon as every rank wrote it
                saver.wait()
            if ((step == plan.steps and config.checkpoint_final) or stopping
                    or (config.checkpoint_every and step % config.checkpoint_every == 0)):
                train_state = {"step": step, "tokens_seen": counters.tokens_seen,
                               "skipped_steps": counters.skipped_total, "guard": guard.state_dict(),
                               "last_loss": counters.last_loss, "train_seconds": counters.seconds + time.perf_counter() - started - elapsed,
                               "step_seconds": counters.step_seconds, **plan.state_dict(), **task.state_dict()}
                saver.save(run_dir, step, model, optimizer, train_state, model_config, raw_recipe,
                           keep_last=config.keep_last)
            counters.seconds += time.perf_counter() - started - elapsed
            if stopping:
                log(f"stopped by signal at step {step}; checkpoint saved, resume with resume=auto")
                break
    bar.close()
    saver.wait()
    summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": counters.step, "tokens_seen": counters.tokens_seen,
                               "skipped_steps": counters.skipped_total, "final_loss": counters.last_loss,
                               "params": num_params(model_config), "train_seconds": round(counters.seconds, 2),
                               "finished": counters.step == plan.steps}
    if config.time_budget_s:
        summary.update(time_budget_s=config.time_budget_s, planned_steps=plan.steps)
    if summary["finished"]:
        final_weights, description = None, ""
        if config.anneal_every and plan.anneal_steps:
            final_weights = ckpt.average_anneal_weights(run_dir, model, model_config, log)
            summary["averaged"] = str(final_weights)
            kept = len(ckpt.anneal_snapshots(run_dir, model_config))
            description = f"average of {kept} annealing checkpoints (steps {plan.anneal_start + 1}-{plan.steps})"
            runner.after_optimizer_step()
        elif config.checkpoint_final:
            final_weights, description = ckpt.step_dir(run_dir, plan.steps), f"checkpoint of step {plan.steps}"
        if final_weights is not None and config.final_model:
            summary["final_model"] = str(ckpt.write_final_model(run_dir, final_weights, description, log))
        if validate is not None:
            final_val = validate()
            metrics.log("val", counters.step, **final_val)
            summary.update(final_val)
        if benchmarks is not None and config.benchmark_every and counters.step % config.benchmark_every:
            metrics.log("eval", counters.step, **benchmarks(model, counters.step))
    metrics.close()
    return summary


def _apply_or_skip(result: StepLoss, grad_norm: float, optimizer: torch.optim.Optimizer, runner: Runner,
                   guard: StepGuard, counters: _Counters, metrics: MetricsLog) -> None:
    """Apply the step's gradients, or skip the step (and log why) when the guard says so."""
    skip_reason = guard.reason_to_skip(result.loss, grad_norm)
    if skip_reason:
        counters.skipped_total += 1
        counters.consecutive_bad += 1
        metrics.log("event", counters.step + 1, event="skipped_step", reason=skip_reason,
                    loss=result.loss if math.isfinite(result.loss) else None,
                    grad_norm=grad_norm if math.isfinite(grad_norm) else None, skipped_steps=counters.skipped_total)
        return
    optimizer.step()
    runner.after_optimizer_step()
    guard.applied(grad_norm)
    counters.consecutive_bad = 0
    counters.last_loss = result.loss


def _announce_plan(plan: StepPlan, config: LoopConfig, counters: _Counters, metrics: MetricsLog, bar: tqdm,
                   log) -> None:
    """Say how many steps fit in the time budget, in the log, the metrics and the progress bar."""
    log(f"time budget {config.time_budget_s:.0f} s: {plan.steps} of at most {config.steps} steps "
        f"({plan.anneal_steps} annealing), planned at step {counters.step} after {counters.seconds:.1f} s")
    metrics.log("event", counters.step, event="planned_steps", steps=plan.steps, anneal_steps=plan.anneal_steps,
                time_budget_s=config.time_budget_s, seconds=counters.seconds)
    bar.total = plan.steps
    bar.refresh()


def _stop_diverged(counters: _Counters, metrics: MetricsLog, bar: tqdm, saver: ckpt.Checkpointer,
                   run_dir: Path) -> None:
    metrics.close()
    bar.close()
    saver.wait()
    last = ckpt.latest_valid(run_dir)
    raise TrainingDiverged(
        f"{counters.consecutive_bad} consecutive steps had a non-finite loss or exploding gradient "
        f"(last at step {counters.step}); stopped. Last good checkpoint: {last or 'none'}. "
        "Lower optim.lr, raise optim.warmup_steps, or check the data."
    )


def find_resume(config: LoopConfig, run_dir: Path, log=print) -> Path | None:
    """The checkpoint to resume from per `config.resume`, or None to start afresh."""
    if config.resume == "never":
        if ckpt.list_checkpoints(run_dir):
            raise PastureError(
                f"{run_dir} already holds checkpoints; pass resume=auto to continue that run, "
                "or choose a new log.dir (nothing was overwritten)"
            )
        return None
    if config.resume == "auto":
        return ckpt.latest_valid(run_dir, log=log)
    folder = Path(config.resume)
    if not folder.exists():
        raise PastureError(f"resume={config.resume}: no such checkpoint folder")
    return ckpt.resolve(folder)


def agree_across_ranks(stop_requested: bool, written: bool, device: torch.device) -> tuple[bool, bool]:
    """(any rank was asked to stop, every rank finished its checkpoint write), the same on all ranks.

    A signal reaches ranks at different steps (or only some of them); acting on each rank's
    own flag would send them into the checkpoint's collectives at different steps, where
    they wait for each other until the timeout. One small all-reduce per step avoids it.
    """
    if not is_distributed():
        return stop_requested, written
    flags = torch.tensor([float(stop_requested), float(not written)], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), not bool(flags[1])


class _StopRequest:
    """Turns SIGTERM/SIGINT/SIGUSR1 into a flag the loop checks after each step (then all ranks
    checkpoint and exit together). SIGUSR1 is what a scheduler sends to the workers directly,
    past torchrun, which gives its workers only 30 s between SIGTERM and SIGKILL
    (docs/scaling-out.md, "Stopping a run")."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

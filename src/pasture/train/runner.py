"""One rank's share of a training run, built by one call: `build_runner`.

The runner hides the parallel layout (FSDP2/HSDP, TP, CP, PP) behind three calls the
loop makes each step: `split` (how to read the step's rows), `forward_backward` (the
step's gradients and its loss) and `clip_gradients`. In a single process the layout is
all ones, every process group is None and the module is the model itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from pasture.errors import PastureError
from pasture.model import from_weights
from pasture.model.config import ModelConfig
from pasture.model.llama import AttentionMask, Transformer
from pasture.runtime import all_reduce_sum, autocast, is_distributed
from pasture.train import checkpoint as ckpt
from pasture.train import float8, parallel
from pasture.train.loss import cross_entropy_sum
from pasture.train.parallel import Layout, ParallelConfig
from pasture.train.task import Batch, LossOutput, MicroBatching, NextTokenObjective, Objective


@dataclass
class StepLoss:
    """A step's loss over all ranks: the mean per target, the target count, extra metric means."""

    loss: float
    n_targets: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Runner:
    """How one process takes part in a run: its layout, groups and model pieces.

    `module` is what this rank holds under the model's parameter names: the optimizer,
    gradient clipping and checkpoints see it. `transformer` is the Transformer to call
    (None when pipelined: then `pipeline` drives this rank's stages).
    """

    module: nn.Module
    transformer: nn.Module | None
    device: torch.device
    autocast_dtype: torch.dtype | None
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)
    layout: Layout = Layout(1, 1, 1, 1, 1)
    micro_batch_size: int = 0  # rows per forward/backward per rank; 0: the whole rank's share
    pipeline: parallel.PipelineRunner | None = None
    pipeline_loss: "_PipelineLoss | None" = None
    dp_group: Any = None  # ranks that see different rows of a batch
    dp_cp_group: Any = None  # ranks whose losses add up to the batch loss
    pp_group: Any = None
    cp_group: Any = None  # ranks that hold different chunks of the same sequences
    context_parallel: parallel.ContextParallel | None = None
    tp: bool = False
    loss_chunk_tokens: int = 8192
    compile_loss: bool = False  # torch.compile the chunked loss's elementwise work (`train.compile`)
    loss_scored_only: bool = False  # project only rows with a target (post-training: prompts are masked)
    float8_all_gather: bool = False  # FSDP gathers float8 weights, whose scales follow every weight change

    # ---------------------------------------------------------------- what the loop calls

    def split(self, batch_size: int) -> MicroBatching:
        """How this rank reads a step of `batch_size` rows: plain micro-batches, or under
        pipeline parallelism one read per pipeline run (the schedule cuts it into micro-batches)."""
        micro = self.micro_batch_size or max(1, batch_size // self.layout.dp)
        count, per_run = parallel.check_batch(batch_size, micro, self.parallel_config, self.layout)
        if self.pipeline is not None:
            return MicroBatching(micro * per_run, count // per_run)
        return MicroBatching(micro, count)

    def forward_backward(self, batches: list[Batch], objective: Objective) -> StepLoss:
        """Accumulate the step's gradients over this rank's micro-batches.

        Each micro-batch loss is divided by the step's target count over all data-parallel
        ranks and multiplied by the number of ranks FSDP averages gradients over, so the
        reduced gradient is the gradient of the mean loss over the whole step.
        """
        batches = [self._to_device(b) for b in batches]
        n_targets = all_reduce_sum(torch.tensor(float(sum(objective.count_targets(b) for b in batches)),
                                                device=self.device), self.dp_group)
        grad_scale = self.layout.dp * self.layout.cp
        loss_sum = torch.zeros((), device=self.device)
        metric_sums: dict[str, torch.Tensor] = {}
        for batch in batches:
            if self.pipeline is not None:
                loss_sum += self._pipeline_step(batch, objective, grad_scale / n_targets)
                continue
            with autocast(self.device, self.autocast_dtype):
                out: LossOutput = objective.loss(self, batch)
            (out.loss_sum / n_targets * grad_scale).backward()
            loss_sum += out.loss_sum.detach()
            for name, value in out.metrics.items():
                metric_sums[name] = metric_sums.get(name, 0) + value.detach().double()
        loss = (all_reduce_sum(loss_sum, self.dp_cp_group, self.pp_group) / n_targets).item()
        metrics = {}
        if metric_sums:
            names = sorted(metric_sums)
            summed = all_reduce_sum(torch.stack([metric_sums[n].to(self.device) for n in names]), self.dp_cp_group)
            metrics = {n: v / n_targets.item() for n, v in zip(names, summed.tolist())}
        return StepLoss(loss, n_targets.item(), metrics)

    def clip_gradients(self, max_norm: float) -> float:
        """Clip by the global gradient norm (over shards and pipeline ranks); the norm before clipping."""
        params = [p for p in self.module.parameters()]
        return parallel.clip_gradients(params, max_norm, self.pp_group)

    def after_optimizer_step(self) -> None:
        """Keep what follows the weights in step with them (FSDP's float8 weight scales)."""
        if self.float8_all_gather:
            float8.precompute_fsdp_scales(self.module)

    # ---------------------------------------------------------------- what objectives call (ModelView)

    def token_loss_sum(self, inputs: torch.Tensor, targets: torch.Tensor,
                       document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Summed next-token cross-entropy of this rank's tokens (vocabulary-parallel under TP)."""
        if self.transformer is None:
            raise PastureError("under pipeline parallelism only the next-token objective runs")
        if self.context_parallel is None:
            hidden = self.transformer(inputs, document_ids, return_hidden=True)
        else:
            cp = self.context_parallel
            extra = cp.prepare(document_ids, *inputs.shape, inputs.device)
            hidden = self.transformer(cp.shard(inputs), return_hidden=True, **extra)
            targets = cp.shard(targets)
        return self._hidden_loss_sum(self.transformer, hidden, targets)

    def hidden_states(self, inputs: torch.Tensor, positions: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        if self.transformer is None or self.context_parallel is not None:
            raise PastureError("rows with their own attention mask (tree-packed preference pairs) run without "
                               "pipeline or context parallelism; set parallel.pp and parallel.cp to 1")
        hidden = self.transformer(inputs, positions=positions, mask=mask, return_hidden=True)
        return parallel.whole_sequence(hidden)

    def hidden_loss_sum(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._hidden_loss_sum(self.transformer, hidden, targets)

    # ---------------------------------------------------------------- validation

    def eval_batch_loss(self):
        """`evaluate`'s batch loss for a model split over ranks (every rank evaluates every
        batch), or None for a whole model in one process (evaluate's own path)."""
        if self.pipeline is not None:
            return self._pipeline_eval_loss
        if is_distributed():
            return self._sharded_eval_loss
        return None

    def _sharded_eval_loss(self, inputs, targets, document_ids) -> torch.Tensor:
        with autocast(self.device, self.autocast_dtype):
            total = self.token_loss_sum(inputs, targets, document_ids)
        return all_reduce_sum(total.float(), self.cp_group)

    def _pipeline_eval_loss(self, inputs, targets, document_ids) -> torch.Tensor:
        self.pipeline_loss.scale = 1.0
        losses = self.pipeline.evaluate(inputs, targets, document_ids=document_ids)
        return all_reduce_sum(self.pipeline_loss.unscaled_sum(losses, self.device), self.pp_group, self.cp_group)

    # ---------------------------------------------------------------- internals

    def _to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _hidden_loss_sum(self, holder: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of hidden states against the output projection `holder` holds."""
        if self.tp:
            return parallel.vocab_parallel_loss_sum(holder.output, hidden, targets, self.loss_chunk_tokens,
                                                    self.loss_scored_only)
        return cross_entropy_sum(hidden, holder.output.weight, targets, self.loss_chunk_tokens, self.compile_loss,
                                 self.loss_scored_only)

    def _pipeline_step(self, batch: Batch, objective: Objective, scale: torch.Tensor) -> torch.Tensor:
        if not isinstance(objective, NextTokenObjective):
            raise PastureError("pipeline parallelism carries the next-token objective only; use FSDP for this one")
        self.pipeline_loss.scale = scale
        document_ids = objective.document_ids(batch)
        kwargs = {"document_ids": document_ids} if document_ids is not None else {}
        rows = batch["inputs"].shape[0]
        per_run = rows // (self.micro_batch_size or rows)  # micro-batches in this pipeline run
        losses = self.pipeline.step(batch["inputs"], batch["targets"], per_run, **kwargs)
        return self.pipeline_loss.unscaled_sum(losses, self.device)


class _PipelineLoss:
    """The loss the pipeline schedule calls on the last stage per micro-batch: the chunked
    cross-entropy times `scale` (the step's gradient normalisation)."""

    def __init__(self, runner: Runner, last_stage: nn.Module | None) -> None:
        self.runner, self.last_stage = runner, last_stage
        self.scale: torch.Tensor | float = 1.0

    def __call__(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.runner._hidden_loss_sum(self.last_stage, hidden, targets) * self.scale

    def unscaled_sum(self, losses: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        """The summed cross-entropy of the micro-batches a schedule run reported."""
        if not losses:
            return torch.zeros((), device=device)
        return torch.stack([x.detach() for x in losses]).sum().to(device) / self.scale


# ---------------------------------------------------------------- building a runner


@dataclass
class RunnerSpec:
    """How to build and lay out the model of a run (the recipe's [model], [train] and [parallel] parts)."""

    model_config: ModelConfig
    parallel: ParallelConfig
    layout: Layout
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    seed: int = 0
    attention_backend: str = "auto"
    init_from: str = ""  # weights to start from: a model folder, checkpoint or run
    float8: str = "none"
    compile: bool = False
    micro_batch_size: int = 0
    loss_chunk_tokens: int = 8192
    loss_scored_only: bool = False  # see Runner.loss_scored_only


def _unwrapped(model: nn.Module) -> Transformer:
    """The Transformer a task's model is or wraps."""
    if isinstance(model, Transformer):
        return model
    found = [m for m in model.modules() if isinstance(m, Transformer)]
    if len(found) != 1:
        raise PastureError(f"a task's model must be or wrap exactly one Transformer; {type(model).__name__} "
                           f"holds {len(found)}")
    return found[0]


def _prefix_of(model: nn.Module, transformer: Transformer) -> str:
    """The parameter-name prefix of the Transformer inside the task's model ('' when unwrapped)."""
    return next(name + "." if name else "" for name, m in model.named_modules() if m is transformer)


def build_runner(spec: RunnerSpec, wrap_model: Callable[[Transformer], nn.Module] | None = None) -> Runner:
    """This rank's runner: the model built (and wrapped by `wrap_model(transformer)` when
    given), laid out over the process group, initialised, and `spec.init_from` loaded
    into the Transformer.

    A wrapper initialises its own parameters when built on a real device, and again in
    `init_weights(buffer_device)` (which also calls the Transformer's) after FSDP allocates
    the shards of a model built on `meta`."""
    wrap_model = wrap_model or (lambda transformer: transformer)
    if is_distributed():
        return _build_distributed(spec, wrap_model)
    torch.manual_seed(spec.seed)
    with torch.device(spec.device):
        transformer = Transformer(spec.model_config, attention_backend=spec.attention_backend)
    if spec.init_from:
        state, source_config = ckpt.read_weights(spec.init_from)
        if source_config != spec.model_config:
            raise PastureError(f"model.init_from={spec.init_from} has a different model config than the recipe")
        transformer.load_state_dict(from_weights(state, source_config, spec.device).state_dict())
    with torch.device(spec.device):
        model = wrap_model(transformer)
    float8.apply_float8(transformer, spec.float8)
    parallel.apply_activation_checkpointing(transformer, spec.parallel)
    if spec.compile:
        for layer in transformer.layers:
            layer.compile()
    return Runner(model, transformer, spec.device, spec.autocast_dtype, parallel_config=spec.parallel,
                  micro_batch_size=spec.micro_batch_size, loss_chunk_tokens=spec.loss_chunk_tokens,
                  compile_loss=spec.compile, loss_scored_only=spec.loss_scored_only)


def _build_distributed(spec: RunnerSpec, wrap_model) -> Runner:
    """Build the model on `meta`, apply the layout, then allocate and initialise only this rank's shards."""
    layout, cfg, device = spec.layout, spec.parallel, spec.device
    mesh = parallel.build_mesh(layout, device.type)
    with torch.device("meta"):
        transformer = Transformer(spec.model_config, attention_backend=spec.attention_backend)
        model = wrap_model(transformer)
    wrapped = model is not transformer
    if wrapped and (layout.tp > 1 or layout.cp > 1 or layout.pp > 1):
        raise parallel.ParallelConfigError("a wrapped model (a head on the Transformer) trains under FSDP/HSDP "
                                           "only; set parallel.tp, parallel.cp and parallel.pp to 1")
    float8.apply_float8(transformer, spec.float8, fsdp=layout.fsdp)  # before the pipeline split, TP and FSDP
    runner = Runner(model, transformer, device, spec.autocast_dtype, parallel_config=cfg, layout=layout,
                    micro_batch_size=spec.micro_batch_size, tp=layout.tp > 1, dp_group=mesh.dp.get_group(),
                    dp_cp_group=mesh.dp_cp.get_group(), loss_chunk_tokens=spec.loss_chunk_tokens,
                    compile_loss=spec.compile, loss_scored_only=spec.loss_scored_only, float8_all_gather=float8.fsdp_float8_all_gather(spec.float8, layout.fsdp))
    if layout.cp > 1:
        runner.cp_group = mesh.cp.get_group()
        runner.context_parallel = parallel.ContextParallel(runner.cp_group, layout.cp, mesh.cp.get_local_rank(),
                                                           spec.attention_backend)
    parts = [transformer]
    if layout.pp > 1:
        pp_rank = mesh.pp.get_local_rank()
        runner.module, parts, stage_ids = parallel.split_pipeline(transformer, cfg, layout, pp_rank,
                                                                  runner.context_parallel)
        runner.transformer, runner.pp_group = None, mesh.pp.get_group()
        last = parts[-1] if runner.module.output is not None else None
        runner.pipeline_loss = _PipelineLoss(runner, last)
        runner.pipeline = parallel.PipelineRunner(parts, stage_ids, layout.pp * cfg.stages_per_rank, runner.pp_group,
                                                  device, cfg.pp_schedule, runner.pipeline_loss, runner.context_parallel)
    for part in parts:
        if layout.tp > 1:
            parallel.apply_tensor_parallel(part, mesh.tp)
        parallel.apply_activation_checkpointing(part, cfg)
        if spec.compile:
            for block in part.layers:
                block.compile()
        if layout.fsdp:
            parallel.apply_fsdp(part, mesh.fsdp, spec.autocast_dtype, cfg.fsdp_reshard_after_forward,
                                root=model if wrapped else None)
    runner.module.to_empty(device=device)
    # DTensor draws distinct shards from one seed only on CUDA; on CPU, and across pipeline
    # stages (which hold different layers), distinct seeds keep shards from repeating
    rank = torch.distributed.get_rank()
    offset = rank if device.type != "cuda" else (mesh.pp.get_local_rank() if layout.pp > 1 else 0)
    torch.manual_seed(spec.seed + offset)
    model.init_weights(buffer_device=device)
    for part in parts:
        part.init_rope(device)
    if spec.init_from:
        _load_initial_weights(spec.init_from, runner.module, spec.model_config, _prefix_of(model, transformer))
    return runner


def _load_initial_weights(source: str, module: nn.Module, config: ModelConfig, prefix: str) -> None:
    """Continued training on sharded models: a training checkpoint is read shard by shard
    (DCP reshards); any other model folder is read whole and scattered. `prefix` names the
    Transformer inside a wrapped model."""
    if ckpt.is_run_or_checkpoint(Path(source)) and not prefix:
        ckpt.load_model(ckpt.resolve(Path(source)), module)
        return
    weights, source_config = ckpt.read_weights(source)
    if source_config != config:
        raise PastureError(f"model.init_from={source} has a different model config than the recipe")
    wanted = set(module.state_dict())
    whole = from_weights(weights, source_config)
    state = {prefix + k: v for k, v in whole.state_dict().items() if prefix + k in wanted}
    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=False))

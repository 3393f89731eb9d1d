"""`pasture pretrain RECIPE [key=value ...]`: the pre-training loop.

Reads top to bottom: parse the recipe, build the model, the optimizer and the loader,
resume if asked, then step: stage lookup (sequence length, batch size, learning rate),
micro-batches with gradient accumulation, skip non-finite steps, log, validate,
checkpoint. The annealing phase and checkpoint averaging close the run.

Exact resume: model, optimizer, loader position and RNG state are all in the
checkpoint, and every schedule is a pure function of the step and tokens seen, so a
run killed at any point and resumed produces bit-identical losses on CPU.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pasture.config import apply_overrides, build_dataclass, load_toml_recipe
from pasture.errors import PastureError
from pasture.model.config import ModelConfig, preset
from pasture.model.info import flops_per_token, num_params
from pasture.train import checkpoint as ckpt
from pasture.train import float8, parallel
from pasture.train.guard import StepGuard
from pasture.train.loss import IGNORE_INDEX, cross_entropy_sum
from pasture.train.metrics import MetricsLog, peak_flops
from pasture.train.parallel import Layout, ParallelConfig
from pasture.train.schedule import OptimConfig, build_optimizer, learning_rate, stage_value, validate_stages

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"


class TrainingDiverged(PastureError):
    """Too many consecutive steps had a non-finite loss or an exploding gradient."""


@dataclass
class ModelSection:
    preset: str = "tiny"
    attention_backend: str = "auto"
    init_from: str = ""  # checkpoint to start from (continued pre-training)
    # any ModelConfig field (dim, n_layers, vocab_size, rope_theta, ...) overrides the preset
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    train: list[str] = field(default_factory=list)  # token dataset folders (`pasture tokenize` output)
    weights: list[float] = field(default_factory=list)  # mixing weights, default equal
    val: str = ""  # dataset whose `val` split is held out; default: the first train dataset
    anneal: list[str] = field(default_factory=list)  # datasets for the annealing phase (default: train)
    anneal_weights: list[float] = field(default_factory=list)
    seed: int = 0
    # rows of a batch are read from this many far-apart regions of the shuffled stream,
    # so long documents do not fill whole batches (see pasture.train.loader)
    lanes: int = 32


@dataclass
class TrainSection:
    steps: int = 100
    seq_len: int = 256
    batch_size: int = 8  # sequences per optimizer step, all ranks together
    micro_batch_size: int = 0  # sequences per forward/backward per rank; 0 = no accumulation
    batch_ramp: list[list[float]] = field(default_factory=list)  # [[tokens_seen, batch_tokens], ...]
    seq_len_stages: list[list[float]] = field(default_factory=list)  # [[tokens_seen, seq_len], ...]
    anneal_steps: int = 0  # final steps: learning rate linearly to 0 on the anneal data
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | float32 | bfloat16
    compile: bool = False  # torch.compile each transformer block and the loss's elementwise work
    float8: str = "none"  # none | tensorwise | rowwise: torchao float8 matmuls in the blocks (H100+; pasture[float8])
    document_mask: bool = True
    loss_chunk_tokens: int = 8192  # the loss projects this many tokens to the vocabulary at a time
    seed: int = 0
    max_bad_steps: int = 5  # consecutive skipped steps before the run stops
    max_grad_norm: float = 0.0  # skip a step whose gradient norm exceeds this (0: no ceiling)
    grad_spike_factor: float = 10.0  # skip a step whose gradient norm exceeds this x the recent median (0: off)
    threads: int = 0  # CPU threads (0: torch's default)


@dataclass
class CheckpointSection:
    every: int = 100
    keep_last: int = 3
    anneal_every: int = 0  # during annealing: keep weights every N steps for averaging (0: off)
    final: bool = True  # checkpoint the last step (false for throwaway benchmark runs: 1B + AdamW is 15 GB)


@dataclass
class EvalSection:
    every: int = 50
    batches: int = 8
    batch_size: int = 8
    prompts: list[str] = field(default_factory=list)  # sampled at the end of the run
    sample_tokens: int = 48
    temperature: float = 0.8
    top_p: float = 0.9


@dataclass
class LogSection:
    dir: str = "runs/default"
    every: int = 1
    tensorboard: bool = True
    progress: bool = True


@dataclass
class PretrainRecipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log: LogSection = field(default_factory=LogSection)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    resume: str = "never"  # never | auto | path to a checkpoint folder
    name: str = ""


MODEL_KEYS = {"preset", "attention_backend", "init_from"}


def parse_recipe(raw: dict[str, Any]) -> PretrainRecipe:
    """A typed recipe from TOML data; unknown keys and wrong types raise naming the key."""
    raw = dict(raw)
    model = dict(raw.get("model", {}))
    raw["model"] = {k: v for k, v in model.items() if k in MODEL_KEYS}
    raw["model"]["overrides"] = {k: v for k, v in model.items() if k not in MODEL_KEYS}
    recipe = build_dataclass(PretrainRecipe, raw, "")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    for key in recipe.model.overrides:
        if key not in known:
            raise PastureError(f"unknown key model.{key} (model keys: {', '.join(sorted(MODEL_KEYS | known))})")
    t = recipe.train
    for name in ("steps", "seq_len", "batch_size"):
        if getattr(t, name) <= 0:
            raise PastureError(f"train.{name} must be positive, got {getattr(t, name)}")
    if t.anneal_steps >= t.steps:
        raise PastureError(f"train.anneal_steps={t.anneal_steps} must be below train.steps={t.steps}")
    if t.batch_ramp:
        validate_stages(t.batch_ramp, "train.batch_ramp")
    if t.seq_len_stages:
        validate_stages(t.seq_len_stages, "train.seq_len_stages")
    float8.check_recipe_name(t.float8)
    if t.float8 != "none" and recipe.parallel.tp > 1:
        raise PastureError("train.float8 does not support parallel.tp > 1 yet (torchao's float8 tensor-parallel "
                           "styles are untested here); use it with FSDP/HSDP or pipeline parallelism, or set "
                           "train.float8=none")
    recipe.optim.validate(t.steps)
    if not recipe.data.train:
        raise PastureError("data.train is empty: give token dataset folders made by `pasture tokenize`")
    if recipe.data.weights and len(recipe.data.weights) != len(recipe.data.train):
        raise PastureError("data.weights must have one weight per data.train folder")
    return recipe


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> tuple[PretrainRecipe, dict[str, Any]]:
    raw = apply_overrides(load_toml_recipe(name_or_path, RECIPE_DIR), list(overrides))
    return parse_recipe(raw), raw


# ---------------------------------------------------------------- building blocks


def resolve_device(name: str) -> torch.device:
    """The device to train on; under torchrun, each process takes the GPU of its LOCAL_RANK."""
    import os

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PastureError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun, even as its only process (then the
    run takes the multi-GPU code path: FSDP2 with its mixed precision); (rank, world size)."""
    import os

    import torch.distributed as dist

    if not dist.is_initialized() and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return _world()


def _autocast_dtype(recipe: PretrainRecipe, device: torch.device) -> torch.dtype | None:
    """bf16 autocast over fp32 master weights on GPU; plain fp32 on CPU unless asked."""
    choice = recipe.train.dtype
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if choice == "bfloat16":
        return torch.bfloat16
    if choice == "float32":
        return None
    raise PastureError(f"train.dtype must be auto, float32 or bfloat16, got {choice!r}")


def build_model_config(recipe: PretrainRecipe, dataset_vocab: int) -> ModelConfig:
    """The preset with recipe overrides; the vocabulary follows the data unless set explicitly."""
    config = preset(recipe.model.preset)
    values = config.to_dict()
    values.update(recipe.model.overrides)
    if "vocab_size" not in recipe.model.overrides:
        values["vocab_size"] = dataset_vocab
    config = build_dataclass(ModelConfig, values, "model")
    if config.vocab_size < dataset_vocab:
        raise PastureError(f"model.vocab_size={config.vocab_size} is smaller than the data's vocabulary {dataset_vocab}")
    return config


def _open_datasets(paths: list[str], split: str = "train"):
    from pasture.train.shards import TokenDataset

    return [TokenDataset(p, split=split) for p in paths]


def _loader(paths: list[str], weights: list[float], seed: int, rank: int, world: int, lanes: int):
    from pasture.train.loader import PackedLoader

    datasets = _open_datasets(paths)
    weights = weights or [1.0] * len(datasets)
    return PackedLoader(list(zip(datasets, weights)), seed=seed, rank=rank, world_size=world, lanes=lanes), datasets


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_sum(value: torch.Tensor, *groups) -> torch.Tensor:
    """Sum over each process group in turn (none in a single process)."""
    import torch.distributed as dist

    for group in groups:
        if group is not None:
            dist.all_reduce(value, group=group)
    return value


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (then checkpoints and exits)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
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


def _peak_memory_gib(device: torch.device) -> float:
    """Peak memory in GiB (2**30 bytes, the unit of `pasture plan`): allocated on the GPU,
    the process's resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


@torch.no_grad()
def evaluate(model, val_loader, device, autocast_dtype, batch_loss=None) -> dict[str, float]:
    """Held-out loss (nats/token) and bits per byte over the validation batches.

    `batch_loss(inputs, targets, document_ids)` gives the summed loss of one batch when the
    model is split over devices (every rank then evaluates every batch); default: the model's.
    """
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for batch in val_loader:
        inputs = batch["inputs"].to(device)
        targets = batch["targets"].to(device)
        if batch_loss is not None:
            total += batch_loss(inputs, targets, batch["document_ids"].to(device)).double().cpu()
        else:
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                hidden = model(inputs, batch["document_ids"].to(device), return_hidden=True)
                total += cross_entropy_sum(hidden, model.output.weight, targets).double().cpu()
        count += int((targets != IGNORE_INDEX).sum())
    model.train()
    loss = (total / max(count, 1)).item()
    bpb = (total / math.log(2) / max(val_loader.bytes, 1)).item()
    return {"val_loss": loss, "val_bpb": bpb, "val_tokens": count, "val_bytes": val_loader.bytes}


# ---------------------------------------------------------------- the loop


@dataclass
class _Parallelism:
    """How one process takes part in a run: its layout, groups and model pieces.

    In a single process, `layout` is all ones, every group is None and `module` is the model.
    """

    layout: Layout
    module: torch.nn.Module  # the parameters this rank holds, under the model's names
    forward_model: torch.nn.Module | None  # the model to call (None when pipelined)
    runner: parallel.PipelineRunner | None = None
    pipeline_loss: "_PipelineLoss | None" = None
    dp_group: Any = None  # ranks that see different rows of a batch
    dp_cp_group: Any = None  # ranks whose losses add up to the batch loss
    pp_group: Any = None
    cp_group: Any = None  # ranks that hold different chunks of the same sequences
    context_parallel: parallel.ContextParallel | None = None
    tp: bool = False
    loss_chunk_tokens: int = 8192
    compile_loss: bool = False  # torch.compile the chunked loss's elementwise work (`train.compile`)
    float8_all_gather: bool = False  # FSDP gathers float8 weights, whose scales follow every weight change

    def loss_sum(self, model: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of one micro-batch (vocabulary-parallel under TP)."""
        if self.tp:
            return parallel.vocab_parallel_loss_sum(model.output, hidden, targets, self.loss_chunk_tokens)
        return cross_entropy_sum(hidden, model.output.weight, targets, self.loss_chunk_tokens, self.compile_loss)

    def hidden_states(self, inputs: torch.Tensor, targets: torch.Tensor, document_ids: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states of the model for whole [B, T] rows, and the targets they
        predict; under context parallelism, for this rank's chunks of the rows only."""
        if self.context_parallel is None:
            return self.forward_model(inputs, document_ids, return_hidden=True), targets
        cp = self.context_parallel
        extra = cp.prepare(document_ids, *inputs.shape, inputs.device)
        return self.forward_model(cp.shard(inputs), return_hidden=True, **extra), cp.shard(targets)


class _PipelineLoss:
    """The loss the pipeline schedule calls on the last stage per micro-batch: the chunked
    cross-entropy times `scale` (the step's gradient normalisation)."""

    def __init__(self, par: _Parallelism, last_stage: torch.nn.Module | None) -> None:
        self.par, self.last_stage = par, last_stage
        self.scale: torch.Tensor | float = 1.0

    def __call__(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.par.loss_sum(self.last_stage, hidden, targets) * self.scale

    def unscaled_sum(self, losses: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        """The summed cross-entropy of the micro-batches a schedule run reported."""
        if not losses:
            return torch.zeros((), device=device)
        return torch.stack([x.detach() for x in losses]).sum().to(device) / self.scale


def _single_process(model: torch.nn.Module) -> _Parallelism:
    return _Parallelism(Layout(1, 1, 1, 1, 1), module=model, forward_model=model)


def _build_parallel(recipe: PretrainRecipe, config: ModelConfig, layout: Layout, device: torch.device,
                    param_dtype: torch.dtype | None, rank: int) -> _Parallelism:
    """Build the model on `meta`, apply the layout, then allocate and initialise only this rank's shards."""
    from pasture.model.llama import Transformer

    cfg, t = recipe.parallel, recipe.train
    mesh = parallel.build_mesh(layout, device.type)
    with torch.device("meta"):
        model = Transformer(config, attention_backend=recipe.model.attention_backend)
    float8.apply_float8(model, t.float8, fsdp=layout.fsdp)  # before the pipeline split, TP and FSDP
    par = _Parallelism(layout, module=model, forward_model=model, tp=layout.tp > 1,
                       dp_group=mesh.dp.get_group(), dp_cp_group=mesh.dp_cp.get_group(),
                       float8_all_gather=float8.fsdp_float8_all_gather(t.float8, layout.fsdp))
    if layout.cp > 1:
        par.cp_group = mesh.cp.get_group()
        par.context_parallel = parallel.ContextParallel(par.cp_group, layout.cp, mesh.cp.get_local_rank(),
                                                        recipe.model.attention_backend)
    parts = [model]
    if layout.pp > 1:
        pp_rank = mesh.pp.get_local_rank()
        par.module, parts, stage_ids = parallel.split_pipeline(model, cfg, layout, pp_rank, par.context_parallel)
        par.forward_model, par.pp_group = None, mesh.pp.get_group()
        last = parts[-1] if par.module.output is not None else None
        par.pipeline_loss = _PipelineLoss(par, last)
        par.runner = parallel.PipelineRunner(parts, stage_ids, layout.pp * cfg.stages_per_rank, par.pp_group,
                                             device, cfg.pp_schedule, par.pipeline_loss, par.context_parallel)
    for part in parts:
        if layout.tp > 1:
            parallel.apply_tensor_parallel(part, mesh.tp)
        parallel.apply_activation_checkpointing(part, cfg)
        if t.compile:
            for block in part.layers:
                block.compile()
        if layout.fsdp:
            parallel.apply_fsdp(part, mesh.fsdp, param_dtype, cfg.fsdp_reshard_after_forward)
    par.module.to_empty(device=device)
    # DTensor draws distinct shards from one seed only on CUDA; on CPU, and across pipeline
    # stages (which hold different layers), distinct seeds keep shards from repeating
    offset = rank if device.type != "cuda" else (mesh.pp.get_local_rank() if layout.pp > 1 else 0)
    torch.manual_seed(t.seed + offset)
    model.init_weights(buffer_device=device)
    for part in parts:
        part.init_rope(device)
    if recipe.model.init_from:
        _load_initial_weights(recipe.model.init_from, par.module, config)
    return par


def _load_initial_weights(source: str, module: torch.nn.Module, config: ModelConfig) -> None:
    """Continued pre-training on sharded models: a training checkpoint is read shard by shard
    (DCP reshards); any other model folder is read whole and scattered."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if ckpt.is_run_or_checkpoint(Path(source)):
        ckpt.load_model(ckpt.resolve(Path(source)), module)
        return
    from pasture.model import load

    whole, source_config = load(source)
    if source_config != config:
        raise PastureError(f"model.init_from={source} has a different model config than the recipe")
    wanted = set(module.state_dict())
    state = {k: v for k, v in whole.state_dict().items() if k in wanted}
    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=False))


def _batch_checks(recipe: PretrainRecipe, layout: Layout) -> list[int]:
    """Check every (batch size, sequence length) the ramp and stages can combine; the sequence lengths."""
    t = recipe.train
    seq_stages = t.seq_len_stages or [[0, t.seq_len]]
    ramp = t.batch_ramp or [[0, None]]
    ends = lambda stages, i: stages[i + 1][0] if i + 1 < len(stages) else math.inf  # noqa: E731
    for i, (seq_from, seq_len) in enumerate(seq_stages):
        for j, (batch_from, batch_tokens) in enumerate(ramp):
            if batch_from < ends(seq_stages, i) and seq_from < ends(ramp, j):
                batch_size = int(batch_tokens) // int(seq_len) if batch_tokens else t.batch_size
                parallel.check_batch(batch_size, t.micro_batch_size or max(1, batch_size // layout.dp),
                                     recipe.parallel, layout)
    return [int(s) for _, s in seq_stages]


def pretrain(recipe: PretrainRecipe, raw_recipe: dict[str, Any] | None = None, log=print) -> dict[str, Any]:
    """Train per `recipe`; returns a summary (final losses, steps, run folder).

    Launched by torchrun with several processes, the run follows `recipe.parallel`;
    in one process it trains the whole model on one device.
    """
    from tqdm import tqdm

    from pasture.model import build
    from pasture.train.loader import ValidationLoader

    t, o = recipe.train, recipe.optim
    device = resolve_device(t.device)
    rank, world = init_distributed(device)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    autocast_dtype = _autocast_dtype(recipe, device)
    if t.float8 != "none":
        float8.check_available(device)
        if device.type == "cuda" and not t.compile and rank == 0:
            log("warning: train.float8 without train.compile=true is slower than bf16 (only compile fuses the casts)")
    if t.threads:
        torch.set_num_threads(t.threads)
    run_dir = Path(recipe.log.dir)
    layout = parallel.resolve_layout(recipe.parallel, world)
    seq_lens = _batch_checks(recipe, layout)
    dp_rank = layout.coordinates(rank)["dp"]

    # data: each data-parallel rank reads its own rows; TP/CP/PP peers read the same ones
    loader, datasets = _loader(recipe.data.train, recipe.data.weights, recipe.data.seed, dp_rank, layout.dp,
                               recipe.data.lanes)
    vocab = max(d.vocab_size for d in datasets)
    anneal_loader = None
    if t.anneal_steps and recipe.data.anneal:
        anneal_loader, anneal_sets = _loader(recipe.data.anneal, recipe.data.anneal_weights,
                                             recipe.data.seed + 1, dp_rank, layout.dp, recipe.data.lanes)
        vocab = max(vocab, *(d.vocab_size for d in anneal_sets))
    val_loader = None
    if recipe.eval.every or recipe.eval.batches:
        (val_set,) = _open_datasets([recipe.data.val or recipe.data.train[0]], split="val")
        val_loader = ValidationLoader(val_set, recipe.eval.batch_size, t.seq_len, recipe.eval.batches)

    # model and optimizer
    config = build_model_config(recipe, vocab)
    parallel.validate(recipe.parallel, layout, config, seq_lens=seq_lens)
    if distributed:
        par = _build_parallel(recipe, config, layout, device, autocast_dtype, rank)
    else:
        torch.manual_seed(t.seed)
        model = build(config, device=device, attention_backend=recipe.model.attention_backend)
        if recipe.model.init_from:
            from pasture.model import load

            source, source_config = load(recipe.model.init_from, device=device)
            if source_config != config:
                raise PastureError(f"model.init_from={recipe.model.init_from} has a different model config than the recipe")
            model.load_state_dict(source.state_dict())
        float8.apply_float8(model, t.float8)
        parallel.apply_activation_checkpointing(model, recipe.parallel)
        if t.compile:
            for layer in model.layers:
                layer.compile()
        par = _single_process(model)
    par.loss_chunk_tokens, par.compile_loss = t.loss_chunk_tokens, t.compile
    if rank == 0:
        how = f"{layout.describe()}{', FSDP2' if layout.fsdp else ''}" if distributed else "one process"
        log(f"{num_params(config):,} parameters on {device.type}: {how}")
    model = par.module
    model.train()
    optimizer = build_optimizer(model, o)
    params = [p for p in model.parameters()]

    # resume
    step, tokens_seen, skipped_total = 0, 0, 0
    guard = StepGuard(t.max_grad_norm, t.grad_spike_factor)
    resume_from = _find_resume(recipe, run_dir, log)
    if resume_from is not None:
        state = ckpt.load(resume_from, model, optimizer)
        step, tokens_seen, skipped_total = state["step"], state["tokens_seen"], state["skipped_steps"]
        loader.load_state_dict(state["loader"])
        guard.load_state_dict(state.get("guard", {}))
        if anneal_loader is not None and state.get("anneal_loader"):
            anneal_loader.load_state_dict(state["anneal_loader"])
        log(f"resumed from {resume_from} at step {step} ({tokens_seen:,} tokens)")
    elif rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    if par.float8_all_gather:  # the scales of the weights we start from, as the uninterrupted run had them
        float8.precompute_fsdp_scales(model)
    _record_run_files(run_dir, raw_recipe, datasets, rank)
    metrics = MetricsLog(run_dir, resume_step=step if resume_from else None,
                         tensorboard=recipe.log.tensorboard and rank == 0, write=rank == 0)
    saver = ckpt.Checkpointer(asynchronous=recipe.parallel.async_checkpoint)

    def save(at_step: int) -> None:
        train_state = {"step": at_step, "tokens_seen": tokens_seen, "skipped_steps": skipped_total,
                       "loader": loader.state_dict(), "guard": guard.state_dict(),
                       "anneal_loader": anneal_loader.state_dict() if anneal_loader is not None else None}
        saver.save(run_dir, at_step, model, optimizer, train_state, config, raw_recipe,
                   keep_last=recipe.checkpoint.keep_last)

    def micro_batches(source, batch_size: int, seq_len: int) -> tuple[list[dict[str, Any]], int]:
        """This rank's rows of one step, as pipeline runs or plain micro-batches; and the
        micro-batches per pipeline run."""
        micro = t.micro_batch_size or max(1, batch_size // layout.dp)
        count, per_run = parallel.check_batch(batch_size, micro, recipe.parallel, layout)
        if par.runner is not None:
            return [source.next_batch(micro * per_run, seq_len) for _ in range(count // per_run)], per_run
        return [source.next_batch(micro, seq_len) for _ in range(count)], 1

    def forward_backward(batches: list[dict[str, Any]], per_run: int, n_targets: torch.Tensor) -> torch.Tensor:
        """Accumulate the step's gradients; returns this rank's summed loss.

        Each micro-batch loss is divided by the global target count and multiplied by the
        number of ranks FSDP averages gradients over, so the reduced gradient is the
        gradient of the mean loss over the whole batch.
        """
        grad_scale = layout.dp * layout.cp
        loss_sum = torch.zeros((), device=device)
        for b in batches:
            inputs, targets = b["inputs"].to(device), b["targets"].to(device)
            doc_ids = b["document_ids"].to(device) if t.document_mask else None
            if par.runner is not None:
                par.pipeline_loss.scale = grad_scale / n_targets
                kwargs = {"document_ids": doc_ids} if doc_ids is not None else {}
                losses = par.runner.step(inputs, targets, per_run, **kwargs)
                loss_sum += par.pipeline_loss.unscaled_sum(losses, device)
                continue
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                hidden, local_targets = par.hidden_states(inputs, targets, doc_ids)
                micro_loss = par.loss_sum(par.forward_model, hidden, local_targets)
            (micro_loss / n_targets * grad_scale).backward()
            loss_sum += micro_loss.detach()
        return loss_sum

    def validation() -> dict[str, float]:
        if par.runner is not None:
            return evaluate(model, val_loader, device, autocast_dtype, batch_loss=pipeline_batch_loss)
        if distributed:
            return evaluate(model, val_loader, device, autocast_dtype, batch_loss=sharded_batch_loss)
        return evaluate(model, val_loader, device, autocast_dtype)

    def sharded_batch_loss(inputs, targets, doc_ids) -> torch.Tensor:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            hidden, local_targets = par.hidden_states(inputs, targets, doc_ids)
            total = par.loss_sum(par.forward_model, hidden, local_targets)
        return _all_reduce_sum(total.float(), par.cp_group)

    def pipeline_batch_loss(inputs, targets, doc_ids) -> torch.Tensor:
        par.pipeline_loss.scale = 1.0
        losses = par.runner.evaluate(inputs, targets, document_ids=doc_ids)
        return _all_reduce_sum(par.pipeline_loss.unscaled_sum(losses, device), par.pp_group, par.cp_group)

    peak = peak_flops(device)
    consecutive_bad = 0
    last_loss = float("nan")
    anneal_start = t.steps - t.anneal_steps
    bar = tqdm(total=t.steps, initial=step, desc="pretrain", unit="step", dynamic_ncols=True,
               disable=not recipe.log.progress or rank != 0)
    with _StopRequest() as stop:
        while step < t.steps:
            started = time.perf_counter()
            seq_len = stage_value(t.seq_len_stages, tokens_seen, "train.seq_len_stages") if t.seq_len_stages else t.seq_len
            batch_size = (stage_value(t.batch_ramp, tokens_seen, "train.batch_ramp") // seq_len) if t.batch_ramp else t.batch_size
            lr = learning_rate(step, t.steps, o, t.anneal_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            source = anneal_loader if (anneal_loader is not None and step >= anneal_start) else loader
            batches, per_run = micro_batches(source, batch_size, seq_len)
            n_targets = _all_reduce_sum(torch.tensor(
                float(sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in batches)), device=device), par.dp_group)
            loss_sum = forward_backward(batches, per_run, n_targets)
            loss = (_all_reduce_sum(loss_sum, par.dp_cp_group, par.pp_group) / n_targets).item()
            grad_norm = parallel.clip_gradients(params, o.grad_clip or float("inf"), par.pp_group)
            skip_reason = guard.reason_to_skip(loss, grad_norm)
            if skip_reason:
                skipped_total += 1
                consecutive_bad += 1
                metrics.log("event", step + 1, event="skipped_step", reason=skip_reason,
                            loss=loss if math.isfinite(loss) else None,
                            grad_norm=grad_norm if math.isfinite(grad_norm) else None, skipped_steps=skipped_total)
            else:
                optimizer.step()
                if par.float8_all_gather:
                    float8.precompute_fsdp_scales(model)
                guard.applied(grad_norm)
                consecutive_bad = 0
                last_loss = loss
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_tokens = batch_size * seq_len
            tokens_seen += step_tokens
            if consecutive_bad >= t.max_bad_steps:
                metrics.close()
                bar.close()
                saver.wait()
                last = ckpt.latest_valid(run_dir)
                raise TrainingDiverged(
                    f"{consecutive_bad} consecutive steps had a non-finite loss or exploding gradient "
                    f"(last at step {step}); stopped. Last good checkpoint: {last or 'none'}. "
                    "Lower optim.lr, raise optim.warmup_steps, or check the data."
                )
            elapsed = time.perf_counter() - started
            tokens_per_s = step_tokens / elapsed
            if step % recipe.log.every == 0 or step == t.steps:
                mfu = (flops_per_token(config, seq_len) * tokens_per_s / (peak * world)) if peak else None
                metrics.log("train", step, loss=loss, lr=lr, grad_norm=grad_norm, tokens_per_s=tokens_per_s,
                            mfu=mfu, seq_len=seq_len, batch_size=batch_size, tokens_seen=tokens_seen,
                            skipped_steps=skipped_total, memory_gib=_peak_memory_gib(device), step_time_s=elapsed)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
            bar.update(1)
            if val_loader is not None and recipe.eval.every and step % recipe.eval.every == 0 and step < t.steps:
                metrics.log("val", step, **validation())
            if recipe.checkpoint.anneal_every and step > anneal_start and (step - anneal_start) % recipe.checkpoint.anneal_every == 0:
                _save_anneal_weights(run_dir, step, model, config)
            if ((step == t.steps and recipe.checkpoint.final) or stop.requested
                    or (recipe.checkpoint.every and step % recipe.checkpoint.every == 0)):
                save(step)
            if stop.requested:
                log(f"stopped by signal at step {step}; checkpoint saved, resume with resume=auto")
                break
    bar.close()
    saver.wait()
    summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": step, "tokens_seen": tokens_seen,
                               "skipped_steps": skipped_total, "final_loss": last_loss,
                               "params": num_params(config)}
    if step == t.steps:
        if recipe.checkpoint.anneal_every and t.anneal_steps:
            summary["averaged"] = str(_average_anneal_weights(run_dir, model, config, log))
            if par.float8_all_gather:
                float8.precompute_fsdp_scales(model)
        if val_loader is not None:
            final_val = validation()
            metrics.log("val", step, **final_val)
            summary.update(final_val)
    metrics.close()
    return summary


def _find_resume(recipe: PretrainRecipe, run_dir: Path, log) -> Path | None:
    if recipe.resume == "never":
        if ckpt.list_checkpoints(run_dir):
            raise PastureError(
                f"{run_dir} already holds checkpoints; pass resume=auto to continue that run, "
                "or choose a new log.dir (nothing was overwritten)"
            )
        return None
    if recipe.resume == "auto":
        return ckpt.latest_valid(run_dir, log=log)
    folder = Path(recipe.resume)
    if not folder.exists():
        raise PastureError(f"resume={recipe.resume}: no such checkpoint folder")
    return ckpt.resolve(folder)


def _record_run_files(run_dir: Path, raw_recipe: dict[str, Any] | None, datasets, rank: int) -> None:
    """Keep the resolved recipe and the tokenizer beside the checkpoints, so the run folder stands alone."""
    if rank != 0:
        return
    import json

    (run_dir / "recipe.json").write_text(json.dumps(raw_recipe or {}, indent=2, default=str) + "\n")
    tokenizer = datasets[0].header.get("tokenizer") or {}
    path = Path(tokenizer.get("path", "")) if isinstance(tokenizer, dict) else Path(str(tokenizer))
    if path.is_file() and not (run_dir / "tokenizer.model").exists():
        shutil.copyfile(path, run_dir / "tokenizer.model")


def _save_anneal_weights(run_dir: Path, step: int, model, config: ModelConfig) -> None:
    """Keep this step's weights for the final average (every rank writes its own shards)."""
    ckpt.save_weights(run_dir / "anneal" / f"step_{step:08d}", model, config)


def _average_anneal_weights(run_dir: Path, model, config: ModelConfig, log) -> Path:
    """Average the weights kept during annealing into the live model and write them to
    `averaged/` (Llama 3 §3.4.3); the final validation then scores the averaged model."""
    out = run_dir / "averaged"
    folders = sorted((run_dir / "anneal").glob("step_*"))
    ckpt.average_weights_into(model, folders)
    ckpt.save_weights(out, model, config)
    log(f"averaged {len(folders)} annealing checkpoints into {out}")
    return out

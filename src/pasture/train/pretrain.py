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
from pasture.model.info import flops_per_token
from pasture.train import checkpoint as ckpt
from pasture.train.loss import IGNORE_INDEX, cross_entropy_sum
from pasture.train.metrics import MetricsLog, peak_flops
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
    tokenizer: str = ""  # for samples; default: the tokenizer recorded in the dataset


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
    compile: bool = False  # torch.compile each transformer block
    document_mask: bool = True
    seed: int = 0
    max_bad_steps: int = 5  # consecutive skipped steps before the run stops
    max_grad_norm: float = 0.0  # skip a step whose gradient norm exceeds this (0: only non-finite)
    threads: int = 0  # CPU threads (0: torch's default)


@dataclass
class CheckpointSection:
    every: int = 100
    keep_last: int = 3
    anneal_every: int = 0  # during annealing: keep weights every N steps for averaging (0: off)


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
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PastureError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    return torch.device(name)


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


def _loader(paths: list[str], weights: list[float], seed: int, rank: int, world: int):
    from pasture.train.loader import PackedLoader

    datasets = _open_datasets(paths)
    weights = weights or [1.0] * len(datasets)
    return PackedLoader(list(zip(datasets, weights)), seed=seed, rank=rank, world_size=world), datasets


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value)
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


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


@torch.no_grad()
def evaluate(model, val_loader, device, autocast_dtype) -> dict[str, float]:
    """Held-out loss (nats/token) and bits per byte over the validation batches."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for batch in val_loader:
        inputs = batch["inputs"].to(device)
        targets = batch["targets"].to(device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            hidden = model(inputs, batch["document_ids"].to(device), return_hidden=True)
            total += cross_entropy_sum(hidden, model.output.weight, targets).double().cpu()
        count += int((targets != IGNORE_INDEX).sum())
    model.train()
    loss = (total / max(count, 1)).item()
    bpb = (total / math.log(2) / max(val_loader.bytes, 1)).item()
    return {"val_loss": loss, "val_bpb": bpb, "val_tokens": count, "val_bytes": val_loader.bytes}


# ---------------------------------------------------------------- the loop


def pretrain(recipe: PretrainRecipe, raw_recipe: dict[str, Any] | None = None, log=print) -> dict[str, Any]:
    """Train per `recipe`; returns a summary (final losses, steps, run folder)."""
    from tqdm import tqdm

    from pasture.model import build
    from pasture.train.loader import ValidationLoader

    t, o = recipe.train, recipe.optim
    rank, world = _world()
    device = resolve_device(t.device)
    autocast_dtype = _autocast_dtype(recipe, device)
    if t.threads:
        torch.set_num_threads(t.threads)
    run_dir = Path(recipe.log.dir)

    # data
    loader, datasets = _loader(recipe.data.train, recipe.data.weights, recipe.data.seed, rank, world)
    vocab = max(d.vocab_size for d in datasets)
    anneal_loader = None
    if t.anneal_steps and recipe.data.anneal:
        anneal_loader, anneal_sets = _loader(recipe.data.anneal, recipe.data.anneal_weights,
                                             recipe.data.seed + 1, rank, world)
        vocab = max(vocab, *(d.vocab_size for d in anneal_sets))
    val_loader = None
    if recipe.eval.every or recipe.eval.batches:
        (val_set,) = _open_datasets([recipe.data.val or recipe.data.train[0]], split="val")
        val_loader = ValidationLoader(val_set, recipe.eval.batch_size, t.seq_len, recipe.eval.batches)

    # model and optimizer
    config = build_model_config(recipe, vocab)
    torch.manual_seed(t.seed)
    model = build(config, device=device, attention_backend=recipe.model.attention_backend)
    if recipe.model.init_from:
        from pasture.model import load

        source, source_config = load(recipe.model.init_from, device=device)
        if source_config != config:
            raise PastureError(f"model.init_from={recipe.model.init_from} has a different model config than the recipe")
        model.load_state_dict(source.state_dict())
    model.train()
    if t.compile:
        for layer in model.layers:
            layer.compile()
    optimizer = build_optimizer(model, o)

    # resume
    step, tokens_seen, skipped_total = 0, 0, 0
    resume_from = _find_resume(recipe, run_dir, log)
    if resume_from is not None:
        state = ckpt.load(resume_from, model, optimizer)
        step, tokens_seen, skipped_total = state["step"], state["tokens_seen"], state["skipped_steps"]
        loader.load_state_dict(state["loader"])
        if anneal_loader is not None and state.get("anneal_loader"):
            anneal_loader.load_state_dict(state["anneal_loader"])
        log(f"resumed from {resume_from} at step {step} ({tokens_seen:,} tokens)")
    elif rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    _record_run_files(run_dir, raw_recipe, datasets, rank)
    metrics = MetricsLog(run_dir, resume_step=step if resume_from else None,
                         tensorboard=recipe.log.tensorboard and rank == 0)

    def save(at_step: int) -> Path:
        train_state = {"step": at_step, "tokens_seen": tokens_seen, "skipped_steps": skipped_total,
                       "loader": loader.state_dict(),
                       "anneal_loader": anneal_loader.state_dict() if anneal_loader is not None else None}
        return ckpt.save(run_dir, at_step, model, optimizer, train_state, config, raw_recipe,
                         keep_last=recipe.checkpoint.keep_last)

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
            micro = t.micro_batch_size or max(1, batch_size // world)
            if batch_size % (micro * world):
                raise PastureError(
                    f"batch of {batch_size} sequences is not divisible by micro_batch_size={micro} x {world} ranks"
                )
            accumulation = batch_size // (micro * world)
            lr = learning_rate(step, t.steps, o, t.anneal_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            source = anneal_loader if (anneal_loader is not None and step >= anneal_start) else loader
            batches = [source.next_batch(micro, seq_len) for _ in range(accumulation)]
            n_targets = _all_reduce_sum(torch.tensor(
                float(sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in batches)), device=device))
            loss_sum = torch.zeros((), device=device)
            for b in batches:
                doc_ids = b["document_ids"].to(device) if t.document_mask else None
                with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                    hidden = model(b["inputs"].to(device), doc_ids, return_hidden=True)
                    micro_loss = cross_entropy_sum(hidden, model.output.weight, b["targets"].to(device))
                (micro_loss / n_targets * world).backward()
                loss_sum += micro_loss.detach()
            loss = (_all_reduce_sum(loss_sum) / n_targets).item()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip or float("inf")).item()
            bad = not math.isfinite(loss) or not math.isfinite(grad_norm) or (
                t.max_grad_norm > 0 and grad_norm > t.max_grad_norm)
            if bad:
                skipped_total += 1
                consecutive_bad += 1
                metrics.log("event", step + 1, event="skipped_step", loss=loss if math.isfinite(loss) else None,
                            grad_norm=grad_norm if math.isfinite(grad_norm) else None, skipped_steps=skipped_total)
            else:
                optimizer.step()
                consecutive_bad = 0
                last_loss = loss
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_tokens = batch_size * seq_len
            tokens_seen += step_tokens
            if consecutive_bad >= t.max_bad_steps:
                metrics.close()
                bar.close()
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
                            skipped_steps=skipped_total, memory_gb=_peak_memory_gb(device), step_time_s=elapsed)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
            bar.update(1)
            if val_loader is not None and recipe.eval.every and step % recipe.eval.every == 0 and step < t.steps:
                metrics.log("val", step, **evaluate(model, val_loader, device, autocast_dtype))
            if recipe.checkpoint.anneal_every and step > anneal_start and (step - anneal_start) % recipe.checkpoint.anneal_every == 0:
                _save_anneal_weights(run_dir, step, model, config, rank)
            if step == t.steps or (recipe.checkpoint.every and step % recipe.checkpoint.every == 0) or stop.requested:
                save(step)
            if stop.requested:
                log(f"stopped by signal at step {step}; checkpoint saved, resume with resume=auto")
                break
    bar.close()
    summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": step, "tokens_seen": tokens_seen,
                               "skipped_steps": skipped_total, "final_loss": last_loss,
                               "params": sum(p.numel() for p in model.parameters())}
    if step == t.steps:
        if recipe.checkpoint.anneal_every and t.anneal_steps:
            summary["averaged"] = str(_average_anneal_weights(run_dir, model, config, rank, log))
        if val_loader is not None:
            final_val = evaluate(model, val_loader, device, autocast_dtype)
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


def _save_anneal_weights(run_dir: Path, step: int, model, config: ModelConfig, rank: int) -> None:
    from pasture.model.convert import write_checkpoint

    if rank == 0:
        state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
        write_checkpoint(state, config, run_dir / "anneal" / f"step_{step:08d}", "pasture")


def _average_anneal_weights(run_dir: Path, model, config: ModelConfig, rank: int, log) -> Path:
    """Average the weights kept during annealing into one model (Llama 3 §3.4.3)."""
    from pasture.model.convert import read_checkpoint, write_checkpoint

    out = run_dir / "averaged"
    if rank != 0:
        return out
    folders = sorted((run_dir / "anneal").glob("step_*"))
    total: dict[str, torch.Tensor] = {}
    for folder in folders:
        state, _, _ = read_checkpoint(folder)
        for k, v in state.items():
            total[k] = total.get(k, 0) + v.double()
    averaged = {k: (v / len(folders)).float() for k, v in total.items()}
    write_checkpoint(averaged, config, out, "pasture")
    log(f"averaged {len(folders)} annealing checkpoints into {out}")
    return out

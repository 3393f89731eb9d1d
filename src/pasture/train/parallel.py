"""N-D parallelism applied to a built Transformer from outside it (the torchtitan way).

The `[parallel]` recipe section picks a layout: `dp_replicate x dp_shard x tp x cp x pp`
GPUs. This module checks the layout against the world size and the model before any
work starts, builds the device mesh, and then applies, in this order:

- tensor parallelism with sequence parallelism (DTensor plans: column-wise q/k/v/w1/w3,
  row-wise wo/w2, sequence-parallel norms, row-wise embedding, column-wise output with a
  vocabulary-parallel loss); each attention module's head counts become the local ones;
- activation checkpointing: full, every Nth layer, or per op (matmul and attention
  outputs saved, norms/activations/rotary recomputed);
- FSDP2 `fully_shard` per transformer block and on the root (HSDP on a 2-D
  replicate x shard mesh), bf16 parameters and fp32 gradient reduction on GPU;
- pipeline parallelism: the layers split into contiguous stages, the first holding the
  embedding and the last the final norm and output projection, driven by a
  `torch.distributed.pipelining` schedule (GPipe, 1F1B, interleaved 1F1B);
- context parallelism: each rank holds two load-balanced chunks of every sequence and
  all-gathers the keys and values of the whole sequence before attention (Llama 3's
  method, which keeps the document mask).

Mesh order, outermost to innermost: pp, dp_replicate, dp_shard, cp, tp. Tensor
parallelism needs the most bandwidth so it is innermost (inside one node), as in
Llama 3 §3.3.2; pipeline stages exchange only activations, so they span nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import _functional_collectives as funcol
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from pasture.errors import PastureError
from pasture.model.config import ModelConfig
from pasture.model.llama import Transformer, build_attention_mask, positions_from_document_ids
from pasture.train.loss import vocab_parallel_cross_entropy_sum

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")
PP_SCHEDULES = ("1F1B", "Interleaved1F1B", "GPipe")
AC_MODES = ("none", "full", "selective")
AC_SELECTIVE = ("op", "layer")


class ParallelConfigError(PastureError):
    """A parallel layout that cannot run; raised before any work starts, naming the fix."""


@dataclass
class ParallelConfig:
    """The `[parallel]` recipe section. The product of the degrees is the world size."""

    dp_replicate: int = 1  # HSDP replicas (outer data-parallel dimension)
    dp_shard: int = -1  # FSDP shards; -1: whatever the world size leaves
    tp: int = 1  # tensor (+ sequence) parallel, inside a node
    cp: int = 1  # context parallel (sequence split), for long sequences
    pp: int = 1  # pipeline stages (ranks)
    pp_schedule: str = "1F1B"  # 1F1B | Interleaved1F1B | GPipe
    pp_microbatches: int = 0  # micro-batches per pipeline run; 0: all of a step's micro-batches
    pp_stages_per_rank: int = 2  # Interleaved1F1B only: virtual stages per pipeline rank
    activation_checkpoint: str = "none"  # none | full | selective
    ac_selective: str = "op"  # selective: op (save matmuls, recompute the rest) | layer (every ac_every-th layer)
    ac_every: int = 2  # selective layer mode: checkpoint layers 0, N, 2N, ...
    fsdp_reshard_after_forward: bool = True  # false: keep gathered weights for backward (ZeRO-2-like, Llama 3)
    async_checkpoint: bool = False  # save checkpoints in the background (dcp.async_save)

    @property
    def stages_per_rank(self) -> int:
        return self.pp_stages_per_rank if self.pp_schedule == "Interleaved1F1B" else 1


@dataclass(frozen=True)
class Layout:
    """Resolved degrees (dp_shard filled in) for one world size."""

    dp_replicate: int
    dp_shard: int
    tp: int
    cp: int
    pp: int

    @property
    def dp(self) -> int:
        """Data-parallel ranks: each sees its own rows of the batch."""
        return self.dp_replicate * self.dp_shard

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.cp * self.pp

    @property
    def fsdp(self) -> bool:
        """Whether weights go through FSDP: more than one rank holds the same slice of them,
        or the run is torchrun's only process, where FSDP2 (on a mesh of one) gives the
        mixed precision of multi-GPU runs: bf16 parameters, fp32 gradient reduction."""
        return self.dp * self.cp > 1 or self.world_size == 1

    def coordinates(self, rank: int) -> dict[str, int]:
        """This rank's index along each mesh dimension (row-major over MESH_DIMS), plus `dp`."""
        sizes = {"pp": self.pp, "dp_replicate": self.dp_replicate, "dp_shard": self.dp_shard,
                 "cp": self.cp, "tp": self.tp}
        coords = {}
        for name in reversed(MESH_DIMS):
            rank, coords[name] = divmod(rank, sizes[name])
        coords["dp"] = coords["dp_replicate"] * self.dp_shard + coords["dp_shard"]
        return coords

    def describe(self) -> str:
        return (f"dp_replicate {self.dp_replicate} x dp_shard {self.dp_shard} x tp {self.tp} "
                f"x cp {self.cp} x pp {self.pp} = {self.world_size} GPUs")


def resolve_layout(cfg: ParallelConfig, world_size: int) -> Layout:
    """Fill in dp_shard=-1 and check that the layout multiplies out to `world_size`."""
    for name in ("dp_replicate", "tp", "cp", "pp"):
        if getattr(cfg, name) < 1:
            raise ParallelConfigError(f"parallel.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.dp_shard == 0 or cfg.dp_shard < -1:
        raise ParallelConfigError(f"parallel.dp_shard must be >= 1 or -1 (the rest of the world), got {cfg.dp_shard}")
    others = cfg.dp_replicate * cfg.tp * cfg.cp * cfg.pp
    if cfg.dp_shard == -1:
        if world_size % others:
            raise ParallelConfigError(
                f"world size {world_size} is not divisible by dp_replicate*tp*cp*pp = {others}; "
                f"launch a multiple of {others} processes or change [parallel]"
            )
        dp_shard = world_size // others
    else:
        dp_shard = cfg.dp_shard
    layout = Layout(cfg.dp_replicate, dp_shard, cfg.tp, cfg.cp, cfg.pp)
    if layout.world_size != world_size:
        raise ParallelConfigError(
            f"parallel layout {layout.describe()} does not match the world size {world_size}; "
            f"launch {layout.world_size} processes or set parallel.dp_shard=-1"
        )
    return layout


def validate(cfg: ParallelConfig, layout: Layout, model: ModelConfig, *, seq_lens: list[int]) -> None:
    """Every check that does not need a process group, so bad layouts fail before any work."""
    if cfg.pp_schedule not in PP_SCHEDULES:
        raise ParallelConfigError(f"parallel.pp_schedule must be one of {', '.join(PP_SCHEDULES)}, got {cfg.pp_schedule!r}")
    if cfg.activation_checkpoint not in AC_MODES:
        raise ParallelConfigError(
            f"parallel.activation_checkpoint must be one of {', '.join(AC_MODES)}, got {cfg.activation_checkpoint!r}")
    if cfg.ac_selective not in AC_SELECTIVE:
        raise ParallelConfigError(f"parallel.ac_selective must be op or layer, got {cfg.ac_selective!r}")
    if cfg.ac_every < 1:
        raise ParallelConfigError(f"parallel.ac_every must be >= 1, got {cfg.ac_every}")
    if layout.tp > 1:
        for name in ("n_heads", "n_kv_heads"):
            if getattr(model, name) % layout.tp:
                raise ParallelConfigError(
                    f"parallel.tp={layout.tp} does not divide model.{name}={getattr(model, name)}; "
                    f"choose tp among the divisors of {math.gcd(model.n_heads, model.n_kv_heads)}")
        if model.ffn_hidden_dim % layout.tp or model.vocab_size % layout.tp:
            raise ParallelConfigError(
                f"parallel.tp={layout.tp} must divide the FFN width {model.ffn_hidden_dim} and the vocabulary "
                f"{model.vocab_size}; pad model.vocab_size or choose another tp")
        if model.tie_embeddings:
            raise ParallelConfigError("parallel.tp > 1 needs untied embeddings; set model.tie_embeddings=false or tp=1")
    if layout.pp > 1:
        if model.tie_embeddings:
            raise ParallelConfigError(
                "parallel.pp > 1 needs untied embeddings (the first and last stages hold them); "
                "set model.tie_embeddings=false or pp=1")
        if cfg.pp_schedule == "Interleaved1F1B" and cfg.pp_stages_per_rank < 2:
            raise ParallelConfigError("parallel.pp_schedule=Interleaved1F1B needs parallel.pp_stages_per_rank >= 2")
        stages = layout.pp * cfg.stages_per_rank
        if stages > model.n_layers:
            raise ParallelConfigError(
                f"{stages} pipeline stages (pp={layout.pp} x {cfg.stages_per_rank} per rank) for "
                f"{model.n_layers} layers leaves stages without a layer; lower parallel.pp")
        if cfg.pp_microbatches < 0:
            raise ParallelConfigError(f"parallel.pp_microbatches must be >= 0, got {cfg.pp_microbatches}")
    if layout.cp > 1:
        for seq_len in seq_lens:
            if seq_len % (2 * layout.cp):
                raise ParallelConfigError(
                    f"sequence length {seq_len} is not divisible by 2*cp = {2 * layout.cp} "
                    "(context parallel splits each sequence into 2*cp load-balanced chunks); "
                    "change train.seq_len or parallel.cp")


def check_batch(batch_size: int, micro: int, cfg: ParallelConfig, layout: Layout) -> tuple[int, int]:
    """(micro-batches per data-parallel rank per step, micro-batches per pipeline run) for one batch size."""
    if batch_size % (micro * layout.dp):
        raise ParallelConfigError(
            f"batch of {batch_size} sequences is not divisible by micro_batch_size={micro} x {layout.dp} "
            "data-parallel ranks; change train.batch_size, train.batch_ramp or train.micro_batch_size")
    count = batch_size // (micro * layout.dp)
    per_run = cfg.pp_microbatches or count
    if layout.pp > 1 and count % per_run:
        raise ParallelConfigError(
            f"{count} micro-batches per data-parallel rank are not divisible by parallel.pp_microbatches="
            f"{per_run}; choose pp_microbatches dividing {count} (or 0 for all of them)")
    return count, per_run


# ---------------------------------------------------------------- mesh


@dataclass(frozen=True)
class Meshes:
    """The device meshes one rank takes part in, each kept as built (never sliced back out of a root)."""

    pp: Any
    dp: Any  # data parallel: dp_replicate x dp_shard
    cp: Any
    tp: Any
    dp_cp: Any  # data x context parallel: the ranks that sum the loss
    fsdp: Any  # dp_shard x cp (context-parallel ranks shard weights too), 2-D with dp_replicate for HSDP


def build_mesh(layout: Layout, device_type: str) -> Meshes:
    """Views of one world mesh, unflattened along MESH_DIMS' row-major rank order.

    Slicing a flattened dimension out of a root mesh is deprecated in torch, so every
    view that needs a merged dimension (data, FSDP) is its own unflattening of the world.
    """
    world = init_device_mesh(device_type, (layout.world_size,), mesh_dim_names=("world",))
    data = world._unflatten(0, (layout.pp, layout.dp_replicate * layout.dp_shard, layout.cp, layout.tp),
                            ("pp", "dp", "cp", "tp"))
    dense = world._unflatten(0, (layout.pp, layout.dp_replicate, layout.dp_shard * layout.cp, layout.tp),
                             ("pp", "dp_replicate", "dp_shard_cp", "tp"))
    fsdp = dense["dp_replicate", "dp_shard_cp"] if layout.dp_replicate > 1 else dense["dp_shard_cp"]
    return Meshes(pp=data["pp"], dp=data["dp"], cp=data["cp"], tp=data["tp"],
                  dp_cp=data["dp", "cp"]._flatten("dp_cp"), fsdp=fsdp)


# ---------------------------------------------------------------- tensor parallel


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> None:
    """Megatron-style TP with sequence parallelism on every block, in place.

    Activations between blocks stay sharded along the sequence (Shard(1)); each block
    gathers them before its q/k/v and w1/w3 projections and reduce-scatters after wo/w2.
    The output projection's weight is sharded over the vocabulary for `vocab_parallel_loss_sum`.
    """
    tp = tp_mesh.size()
    root_plan = {
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False),
    }
    if getattr(model, "tok_embeddings", None) is not None:
        root_plan["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
    parallelize_module(model, tp_mesh, {k: v for k, v in root_plan.items() if getattr(model, k, None) is not None})
    for block in model.layers:
        plan = {
            "attention_norm": SequenceParallel(),
            # forward(x, cos, sin, mask, cache): only x is an activation to gather
            "attention": PrepareModuleInput(input_layouts=(Shard(1), None, None, None, None),
                                            desired_input_layouts=(Replicate(), None, None, None, None)),
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
            "feed_forward.w3": ColwiseParallel(),
        }
        parallelize_module(block, tp_mesh, plan)
        # the attention reshapes with view(B, T, n_heads, head_dim): it now sees 1/tp of the heads
        block.attention.n_heads //= tp
        block.attention.n_kv_heads //= tp


def whole_sequence(hidden: torch.Tensor) -> torch.Tensor:
    """Hidden states split over the sequence (TP's sequence parallelism) gathered once, as a
    plain tensor; anything else as it is."""
    if isinstance(hidden, DTensor):
        return hidden.redistribute(placements=[Replicate()] * hidden.device_mesh.ndim).to_local()
    return hidden


def vocab_parallel_loss_sum(output: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                            chunk_tokens: int = 8192, scored_only: bool = False) -> torch.Tensor:
    """Summed cross-entropy with the output projection sharded over the vocabulary (TP): each
    rank projects the whole sequence onto its slice of the vocabulary, chunk by chunk, and
    the softmax's maxima and sums are all-reduced, so no rank holds full logits
    (`loss.vocab_parallel_cross_entropy_sum`). The same value on every rank of the TP group."""
    hidden = whole_sequence(hidden)
    weight = output.weight  # DTensor, Shard(0) on the TP mesh
    shard = weight.to_local()
    mesh = weight.device_mesh
    return vocab_parallel_cross_entropy_sum(hidden, shard, targets, mesh.get_local_rank() * shard.shape[0],
                                            mesh.get_group(), chunk_tokens, scored_only)


# ---------------------------------------------------------------- context parallel


class ContextParallel:
    """Context parallelism the way Llama 3 did it (§3.3.2): every sequence is cut into
    2*cp chunks and rank r of the cp group holds chunks r and 2*cp-1-r, so each rank gets
    as much causal attention work as the others. Before attention, every layer all-gathers
    the keys and values of the whole sequence and attends with its own queries only.

    All-gather rather than a ring: it supports any mask, the document mask included, and
    with grouped-query attention the keys and values are small (8 KV heads against 128
    query heads at 405B). The backward of the all-gather reduce-scatters the key/value
    gradients back to the ranks that own those tokens.
    """

    def __init__(self, group, size: int, rank: int, attention_backend: str) -> None:
        self.group, self.size, self.rank, self.attention_backend = group, size, rank, attention_backend

    def token_indices(self, seq_len: int, rank: int, device: torch.device) -> torch.Tensor:
        """Positions in the sequence of the tokens `rank` holds: chunks rank and 2*cp-1-rank."""
        chunk = seq_len // (2 * self.size)
        first = torch.arange(rank * chunk, (rank + 1) * chunk, device=device)
        mirror = 2 * self.size - 1 - rank
        return torch.cat([first, torch.arange(mirror * chunk, (mirror + 1) * chunk, device=device)])

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's tokens of a [B, T, ...] tensor."""
        return x.index_select(1, self.token_indices(x.shape[1], self.rank, x.device))

    def prepare(self, document_ids: torch.Tensor | None, batch: int, seq_len: int, device: torch.device
                ) -> dict[str, Any]:
        """The model's keyword arguments for this rank's tokens of whole [B, T] sequences:
        their rotary positions (restarting per document) and an attention mask over the
        whole sequence that gathers the keys and values from every rank."""
        if seq_len % (2 * self.size):
            raise ParallelConfigError(f"sequence length {seq_len} is not divisible by 2*cp = {2 * self.size}")
        if document_ids is not None:
            positions = positions_from_document_ids(document_ids)
        else:
            positions = torch.arange(seq_len, device=device).expand(batch, seq_len)
        mine = self.token_indices(seq_len, self.rank, device)
        mask = build_attention_mask(document_ids, seq_len, self.attention_backend, device, query_positions=mine)
        # ranks' slices arrive concatenated in rank order; this puts the tokens back in sequence order
        arrival = torch.cat([self.token_indices(seq_len, r, device) for r in range(self.size)])
        mask.gather_keys_values = partial(self._gather, order=torch.argsort(arrival))
        return {"positions": positions.index_select(1, mine), "mask": mask}

    def _gather(self, k: torch.Tensor, v: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, heads, T/cp, hd] of this rank -> of the whole sequence, in order."""
        # renamed in newer torch; both differentiate through the gather
        gather = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd
        both = torch.cat([k, v], dim=1).transpose(0, 2).contiguous()  # gather along dim 0
        full = gather(both, gather_dim=0, group=self.group).index_select(0, order).transpose(0, 2)
        return full.split([k.shape[1], v.shape[1]], dim=1)


# ---------------------------------------------------------------- activation checkpointing


def _saved_ops() -> set:
    """Ops whose outputs selective per-op checkpointing keeps: matmuls (float8 ones are `mm` on
    float8 tensors here), the tensor-wide maxima float8 scales come from (a scalar each, as in
    torchtitan), attention, TP reduce-scatters."""
    aten = torch.ops.aten
    names = [(aten, "mm"), (aten, "addmm"), (aten, "bmm"), (aten, "max"),
             (aten, "_scaled_dot_product_flash_attention"), (aten, "_scaled_dot_product_efficient_attention"),
             (aten, "_scaled_dot_product_cudnn_attention"), (aten, "_scaled_dot_product_flash_attention_for_cpu"),
             (torch.ops._c10d_functional, "reduce_scatter_tensor")]
    # some backends exist only in some builds of torch
    return {getattr(ns, name).default for ns, name in names if hasattr(ns, name)}


def _save_matmuls_policy(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


_SAVED_OPS = _saved_ops()


def apply_activation_checkpointing(model: nn.Module, cfg: ParallelConfig) -> None:
    """Wrap transformer blocks per `cfg.activation_checkpoint`, keeping parameter names."""
    if cfg.activation_checkpoint == "none":
        return
    for name, block in list(model.layers.named_children()):
        layer_id = block.attention.layer_id
        if cfg.activation_checkpoint == "full" or cfg.ac_selective == "layer":
            if cfg.activation_checkpoint == "selective" and layer_id % cfg.ac_every:
                continue
            wrapped = checkpoint_wrapper(block, preserve_rng_state=False)
        else:
            wrapped = checkpoint_wrapper(block, preserve_rng_state=False,
                                         context_fn=partial(create_selective_checkpoint_contexts, _save_matmuls_policy))
        model.layers.register_module(name, wrapped)


# ---------------------------------------------------------------- FSDP


def apply_fsdp(model: nn.Module, dp_mesh, param_dtype: torch.dtype | None, reshard_after_forward: bool,
               root: nn.Module | None = None) -> None:
    """FSDP2 per transformer block and on the model; gradients reduced in fp32.

    The model's own parameters (embedding, final norm, output projection) stay gathered
    after forward: the chunked loss multiplies by `output.weight` outside the model's
    forward. `root`: a module wrapping the model (a reward model's head), sharded last.
    """
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=False)
    if root is not None:
        fully_shard(root, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=False)


# ---------------------------------------------------------------- pipeline parallel


class KeptLayers(nn.ModuleDict):
    """The blocks one pipeline rank holds, under their original indices (so checkpoint
    names match the whole model), iterated in order like the ModuleList they come from."""

    def __iter__(self):
        return iter(self._modules.values())


def pipeline_stage_layers(n_layers: int, n_stages: int) -> list[range]:
    """Contiguous layer ranges per stage, counting the embedding and the output projection
    as one layer each, so the first and last stages hold one block fewer (Llama 3 §3.3.2)."""
    units = n_layers + 2  # unit 0: embedding, units 1..n_layers: blocks, unit n_layers+1: output
    bounds = [round(s * units / n_stages) for s in range(n_stages + 1)]
    return [range(max(lo, 1) - 1, min(hi, n_layers + 1) - 1) for lo, hi in zip(bounds, bounds[1:])]


class PipelineStageModule(Transformer):
    """One pipeline stage of a Transformer: the model with the other stages' layers deleted.
    It keeps its blocks, plus the embedding on the first stage and the final norm and output
    projection on the last, under the model's parameter names, and runs the model's own
    forward (which takes hidden states where there is no embedding).

    forward(x, document_ids=None): x is tokens on the first stage and the hidden state
    elsewhere; the last stage returns normalised hidden states for the loss. Under context
    parallelism x holds this rank's chunks of the sequences and document_ids the whole ones.
    """

    def __init__(self, model: Transformer, layer_ids: range, first: bool, last: bool,
                 context_parallel: ContextParallel | None = None) -> None:
        nn.Module.__init__(self)  # the parts come from `model`, not from a fresh build
        self.config = model.config
        self.attention_backend = model.attention_backend
        self.context_parallel = context_parallel
        self.tok_embeddings = model.tok_embeddings if first else None
        self.layers = KeptLayers({str(i): model.layers[i] for i in layer_ids})
        self.norm = model.norm if last else None
        self.output = model.output if last else None
        self.register_buffer("inv_freq", model.inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, document_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.context_parallel is None:
            return super().forward(x, document_ids, return_hidden=True)
        B, T = x.shape[:2]
        whole_rows = self.context_parallel.prepare(document_ids, B, T * self.context_parallel.size, x.device)
        return super().forward(x, return_hidden=True, **whole_rows)


class RankModel(nn.Module):
    """Everything one pipeline rank holds (one or more stages), under the model's names:
    the module the optimizer, gradient clipping and checkpoints see."""

    def __init__(self, model: Transformer, layer_ids: list[int], first: bool, last: bool) -> None:
        super().__init__()
        self.config = model.config
        self.tok_embeddings = model.tok_embeddings if first else None
        self.layers = KeptLayers({str(i): model.layers[i] for i in layer_ids})
        self.norm = model.norm if last else None
        self.output = model.output if last else None


def split_pipeline(model: Transformer, cfg: ParallelConfig, layout: Layout, pp_rank: int,
                   context_parallel: ContextParallel | None = None
                   ) -> tuple[RankModel, list[PipelineStageModule], list[int]]:
    """This rank's share: (all its parameters, its stage modules, their stage indices).

    Stages are assigned round robin (rank r holds stages r, r+pp, ...), which is what the
    interleaved schedule expects; with one stage per rank that is stage r.
    """
    n_stages = layout.pp * cfg.stages_per_rank
    ranges = pipeline_stage_layers(model.config.n_layers, n_stages)
    stage_ids = list(range(pp_rank, n_stages, layout.pp))
    stages = [PipelineStageModule(model, ranges[s], first=s == 0, last=s == n_stages - 1,
                                  context_parallel=context_parallel) for s in stage_ids]
    kept = [i for s in stage_ids for i in ranges[s]]
    share = RankModel(model, kept, first=0 in stage_ids, last=n_stages - 1 in stage_ids)
    return share, stages, stage_ids


class PipelineRunner:
    """Runs a `torch.distributed.pipelining` schedule over this rank's stages.

    Stage buffers depend on the micro-batch shape, so one schedule is kept per shape the
    batch ramp, the sequence-length stages and validation ask for (a few per run).
    `loss_fn(hidden, targets)` is called on the last stage per micro-batch.
    """

    def __init__(self, stages: list[PipelineStageModule], stage_ids: list[int], n_stages: int, pp_group,
                 device: torch.device, schedule: str, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 context_parallel: ContextParallel | None = None):
        self.modules, self.stage_ids, self.n_stages = stages, stage_ids, n_stages
        self.group, self.device, self.schedule_name, self.loss_fn = pp_group, device, schedule, loss_fn
        self.context_parallel = context_parallel
        self.has_first = 0 in stage_ids
        self.has_last = n_stages - 1 in stage_ids
        self._schedules: dict[tuple, Any] = {}

    def _build(self, n_microbatches: int):
        stages = [PipelineStage(m, s, self.n_stages, self.device, group=self.group)
                  for m, s in zip(self.modules, self.stage_ids)]
        if self.schedule_name == "Interleaved1F1B":
            return ScheduleInterleaved1F1B(stages, n_microbatches, loss_fn=self.loss_fn, scale_grads=False)
        kind = Schedule1F1B if self.schedule_name == "1F1B" else ScheduleGPipe
        return kind(stages[0], n_microbatches, loss_fn=self.loss_fn, scale_grads=False)

    def _schedule_for(self, n_microbatches: int, shape: tuple[int, ...]):
        key = (n_microbatches, shape)
        if key not in self._schedules:
            self._schedules[key] = self._build(n_microbatches)
        return self._schedules[key]

    def _local(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's chunks of the rows under context parallelism (the stages get the
        whole rows' document ids to build positions and masks)."""
        if self.context_parallel is None:
            return inputs, targets
        return self.context_parallel.shard(inputs), self.context_parallel.shard(targets)

    def step(self, inputs: torch.Tensor, targets: torch.Tensor, n_microbatches: int,
             **kwargs: torch.Tensor) -> list[torch.Tensor]:
        """Forward and backward over `n_microbatches` micro-batches of these rows; the loss_fn
        value of each micro-batch on the rank holding the last stage (empty elsewhere)."""
        inputs, targets = self._local(inputs, targets)
        schedule = self._schedule_for(n_microbatches, tuple(inputs.shape))
        args = (inputs,) if self.has_first else ()
        losses: list[torch.Tensor] = []
        schedule.step(*args, target=targets if self.has_last else None, losses=losses, **kwargs)
        return losses

    @torch.no_grad()
    def evaluate(self, inputs: torch.Tensor, targets: torch.Tensor, **kwargs: torch.Tensor) -> list[torch.Tensor]:
        """Forward only, one row per micro-batch; loss_fn values as for `step`."""
        inputs, targets = self._local(inputs, targets)
        schedule = self._schedule_for(inputs.shape[0], tuple(inputs.shape))
        args = (inputs,) if self.has_first else ()
        losses: list[torch.Tensor] = []
        schedule.eval(*args, target=targets if self.has_last else None, losses=losses, **kwargs)
        return losses


# ---------------------------------------------------------------- gradients and reductions


def local_value(x: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a possibly distributed one (replicated or partial DTensor)."""
    return x.full_tensor() if isinstance(x, DTensor) else x


def clip_gradients(parameters: list[nn.Parameter], max_norm: float, pp_group=None) -> float:
    """Clip to `max_norm` by the global gradient norm, over sharded (DTensor) gradients and
    over pipeline ranks, which each hold different parameters. Returns the norm before clipping."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = local_value(torch.nn.utils.get_total_norm(grads, 2.0)) if grads else torch.zeros(())
    if pp_group is not None:
        squared = norm.float() ** 2
        dist.all_reduce(squared, group=pp_group)
        norm = squared.sqrt()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return norm.item()

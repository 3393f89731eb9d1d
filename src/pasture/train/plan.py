"""`pasture plan`: will a recipe's parallel layout fit, and what will it cost? Shapes only.

Memory per GPU, for the GPU holding the most (the first pipeline stage, which also keeps
the most micro-batches in flight):

- weights: fp32 master copy, sharded by FSDP (dp_shard x cp), TP and PP: 4 B/param;
- gradients: fp32, sharded the same way: 4 B/param; AdamW moments: 8 B/param;
- weights for compute (bf16): with FSDP, the gathered blocks: two (one computing, one
  prefetched) when FSDP reshards after forward, every block of the stage when it does
  not, plus the embedding and output projection (kept gathered: the loss uses them),
  divided by TP; without FSDP, autocast's bf16 copy of every weight a matmul uses,
  cached for the backward: not the embedding table (only looked up), nor the output
  projection (the loss casts it once, inside its own pass).
  Under `train.float8` the blocks' linears cast their weights straight to float8 inside
  each matmul and keep only the master weight for backward, so they add no bf16 copy
  without FSDP; with FSDP, tensorwise scaling all-gathers them in float8 (1 B/param),
  rowwise in bf16. Their saved inputs stay bf16, so activations are unchanged;
- activations saved for backward, bf16, per token per block (D = dim, F = FFN width,
  K = n_kv_heads x head_dim), read off this model's forward in `model/llama.py` and
  measured with saved-tensor hooks in tests/test_plan.py:
    each RMSNorm: its fp32 input copy 4D + normalised bf16 2D + output 2D = 8D (x2 norms)
    attention: rotated q 2D, k 2K, v 2K, SDPA output 2D (which `wo` reads as a view of the
      same storage), log-sum-exp (fp32 per head)
    SwiGLU: w1 out 2F, silu out 2F, w3 out 2F, product (w2 input) 2F = 8F
  total 20D + 4K + 8F bytes per token per block (+4 bytes per head). That holds with bf16
  weights (FSDP's mixed precision), where the residual stream is bf16. Without FSDP,
  autocast over fp32 weights keeps the residual stream in fp32, and each norm keeps its
  normalised copy in fp32 (4D, not 2D): 4D more (the norm casts its output to bf16 once,
  for all the projections after it). Under tensor + sequence parallelism everything is divided by
  tp except the two gathered norm outputs (the column-parallel matmuls keep their
  full-sequence input): (16D + 4K + 8F)/tp + 4D. Full checkpointing keeps only each
  block's input (2D/tp per token, 4D/tp with an fp32 residual stream) plus one block's
  recompute; per-op selective keeps matmul and attention outputs: (10D + 4K + 4F)/tp + 2D;
  per-layer selective checkpoints every Nth block fully. Under context parallelism the
  attention keeps the gathered keys and values of the whole sequence: 4K becomes 4K x cp.
- the chunked loss (`train/loss.py`, gradients taken in the forward): at most
  `train.loss_chunk_tokens` (8,192) tokens of logits at a time, bf16 logits, their fp32
  copy turned into the softmax in place, and its bf16 cast (8 B x vocab per token), plus
  the output weight's fp32 gradient (4 B x vocab x dim) and, for an fp32 master weight,
  its bf16 cast (2 B x vocab x dim); all divided by TP (each rank holds its slice of the
  vocabulary).

Tokens per micro-batch and rank: micro_batch_size x seq_len / cp. In flight on the first
pipeline stage: pp micro-batches for 1F1B, pp(1 + (pp-1)/(pp v)) for interleaved 1F1B with
v stages per rank, all of a run's micro-batches for GPipe.
"""

from __future__ import annotations

from dataclasses import dataclass

from pasture.model.config import ModelConfig
from pasture.model.info import GIB, flops_per_token, num_params
from pasture.train.parallel import Layout, ParallelConfig, pipeline_stage_layers

LOSS_CHUNK_TOKENS = 8192


def block_params(config: ModelConfig) -> int:
    """Parameters of one transformer block (attention, SwiGLU, two norm gains)."""
    hd, dim, ffn = config.head_dim, config.dim, config.ffn_hidden_dim
    return dim * hd * (2 * config.n_heads + 2 * config.n_kv_heads) + 3 * dim * ffn + 2 * dim


def stage_params(config: ModelConfig, n_stages: int) -> list[int]:
    """Parameters held by each pipeline stage: its blocks, the embedding on the first, the
    final norm and output projection on the last (the output counted even when tied)."""
    ranges = pipeline_stage_layers(config.n_layers, n_stages)
    embedding = config.vocab_size * config.dim
    counts = [len(r) * block_params(config) for r in ranges]
    counts[0] += embedding
    counts[-1] += config.dim + (0 if config.tie_embeddings and n_stages == 1 else embedding)
    return counts


def activation_bytes_per_token(config: ModelConfig, tp: int = 1, mode: str = "none", cp: int = 1,
                               fp32_residual: bool = False) -> float:
    """bf16 activation bytes one block keeps for backward, per token of a rank's micro-batch.

    mode: "none" | "full" | "op" (selective per-op). See the module docstring for the terms.
    cp: context-parallel degree; attention keeps the keys and values of the whole sequence,
        cp times this rank's tokens.
    fp32_residual: autocast over fp32 weights (no FSDP): the residual stream is fp32.
    """
    dim, ffn = config.dim, config.ffn_hidden_dim
    kv = config.n_kv_heads * config.head_dim * cp
    lse = 4 * config.n_heads / tp
    if mode == "full":
        return (4 if fp32_residual else 2) * dim / tp
    if mode == "op":
        return (10 * dim + 4 * kv + 4 * ffn) / tp + 2 * dim + lse
    gathered = 4 * dim if tp > 1 else 0  # the norms' outputs, all-gathered along the sequence
    fp32_copies = 4 * dim if fp32_residual else 0
    return (20 * dim + 4 * kv + 8 * ffn + fp32_copies - gathered) / tp + gathered + lse


def microbatches_in_flight(cfg: ParallelConfig, layout: Layout, n_microbatches: int) -> float:
    """Micro-batches whose activations the first pipeline stage holds at its peak."""
    if layout.pp == 1:
        return 1
    if cfg.pp_schedule == "GPipe":
        return n_microbatches
    if cfg.pp_schedule == "Interleaved1F1B":
        v = cfg.stages_per_rank
        return min(n_microbatches * v, layout.pp * (1 + (layout.pp - 1) / (layout.pp * v)))
    return min(n_microbatches, layout.pp)


@dataclass
class MemoryPlan:
    """Bytes per GPU for one layout, sequence length and micro-batch size."""

    params_per_gpu: float  # parameters this GPU owns a shard of (after TP, PP, FSDP)
    weights: float
    gradients: float
    optimizer: float
    gathered_weights: float
    activations: float  # with the recipe's activation checkpointing
    activations_none: float
    activations_full: float
    loss: float

    @property
    def total(self) -> float:
        return (self.weights + self.gradients + self.optimizer + self.gathered_weights
                + self.activations + self.loss)


def memory_plan(config: ModelConfig, layout: Layout, cfg: ParallelConfig, seq_len: int,
                micro_batch_size: int, n_microbatches: int,
                loss_chunk_tokens: int = LOSS_CHUNK_TOKENS, float8: str = "none") -> MemoryPlan:
    """Memory of the GPU that needs the most (the first pipeline stage) for this layout."""
    n_stages = layout.pp * cfg.stages_per_rank
    per_stage = stage_params(config, n_stages)
    ranges = pipeline_stage_layers(config.n_layers, n_stages)
    # the stages a rank holds: r, r + pp, ...; the first rank holds the embedding
    rank_params = [sum(per_stage[s] for s in range(r, n_stages, layout.pp)) for r in range(layout.pp)]
    rank_blocks = [sum(len(ranges[s]) for s in range(r, n_stages, layout.pp)) for r in range(layout.pp)]
    params = max(rank_params) / layout.tp
    shard = layout.dp_shard * layout.cp
    weights, gradients, optimizer = 4 * params / shard, 4 * params / shard, 8 * params / shard
    embedding = config.vocab_size * config.dim / layout.tp
    blocks_gathered = 2 if cfg.fsdp_reshard_after_forward else max(rank_blocks)
    block_linears = (block_params(config) - 2 * config.dim) / layout.tp  # all but the norm gains
    if shard > 1:
        linear_bytes = 1 if float8 == "tensorwise" else 2
        gathered = blocks_gathered * (linear_bytes * block_linears + 2 * (block_params(config) / layout.tp - block_linears))
        gathered += 2 * embedding
    else:  # autocast's bf16 copy of every weight a matmul uses, cached until the step's backward
        # the embedding is looked up; the loss casts the output projection itself
        uncached = embedding + (embedding if layout.pp == 1 and not config.tie_embeddings else 0.0)
        float8_linears = max(rank_blocks) * block_linears if float8 != "none" else 0.0
        gathered = 2 * (params - uncached - float8_linears)

    tokens = micro_batch_size * seq_len / layout.cp
    in_flight = microbatches_in_flight(cfg, layout, n_microbatches)
    blocks = rank_blocks[0]

    fp32_residual = shard == 1  # no FSDP: autocast over fp32 weights keeps the residual stream fp32

    def stack(mode_per_block: list[str]) -> float:
        kept = sum(activation_bytes_per_token(config, layout.tp, m, layout.cp, fp32_residual) for m in mode_per_block)
        recompute = (activation_bytes_per_token(config, layout.tp, "none", layout.cp, fp32_residual)
                     if any(m != "none" for m in mode_per_block) else 0.0)
        return tokens * (kept * in_flight + recompute)

    modes = _block_modes(cfg, [i for s in range(0, n_stages, layout.pp) for i in ranges[s]])
    # the final norm's input, normalised copy and (kept by the loss) hidden-state gradient
    final_norm = (10 if fp32_residual else 8) * config.dim * tokens / layout.tp if layout.pp == 1 else 0.0
    logits_tokens = min(tokens, loss_chunk_tokens)
    if layout.pp > 1:  # the loss runs on the last stage, not the first
        loss = 0.0
    else:
        weight_cast = 2 * embedding if shard == 1 else 0.0  # FSDP hands the loss bf16 weights already
        loss = 8 * config.vocab_size / layout.tp * logits_tokens + 4 * embedding + weight_cast
    return MemoryPlan(
        params_per_gpu=params / shard, weights=weights, gradients=gradients, optimizer=optimizer,
        gathered_weights=gathered, activations=stack(modes) + final_norm,
        activations_none=stack(["none"] * blocks) + final_norm,
        activations_full=stack(["full"] * blocks) + final_norm, loss=loss)


def _block_modes(cfg: ParallelConfig, layer_ids: list[int]) -> list[str]:
    if cfg.activation_checkpoint == "full":
        return ["full"] * len(layer_ids)
    if cfg.activation_checkpoint == "selective" and cfg.ac_selective == "op":
        return ["op"] * len(layer_ids)
    if cfg.activation_checkpoint == "selective":
        return ["full" if i % cfg.ac_every == 0 else "none" for i in layer_ids]
    return ["none"] * len(layer_ids)


def render(name: str, config: ModelConfig, layout: Layout, cfg: ParallelConfig, seq_lens: list[int],
           micro_batch_size: int, n_microbatches: int, gpu_memory_gib: float,
           loss_chunk_tokens: int = LOSS_CHUNK_TOKENS, float8: str = "none") -> str:
    """The `pasture plan` report: sizes, FLOPs and memory per GPU for every sequence length."""
    rows = [
        ("recipe", name),
        ("layout", layout.describe()),
        ("parameters", f"{num_params(config):,} ({num_params(config) / 1e9:.2f} B)"),
        ("activation checkpointing", cfg.activation_checkpoint + (
            f" ({cfg.ac_selective})" if cfg.activation_checkpoint == "selective" else "")),
        ("float8 linears", float8),
    ]
    if layout.pp > 1:
        rows.append(("pipeline", f"{cfg.pp_schedule}, {layout.pp * cfg.stages_per_rank} stages, "
                                 f"{n_microbatches} micro-batches per run"))
    lines = _table(rows)
    fits_all = True
    for seq_len in seq_lens:
        plan = memory_plan(config, layout, cfg, seq_len, micro_batch_size, n_microbatches, loss_chunk_tokens,
                           float8)
        fits = plan.total <= gpu_memory_gib * GIB
        fits_all &= fits
        lines.append("")
        lines += _table([
            (f"sequence length {seq_len:,}", f"micro-batch {micro_batch_size} x {seq_len:,} tokens"),
            ("training FLOPs per token", f"{flops_per_token(config, seq_len):.4g}"),
            ("parameters per GPU", f"{plan.params_per_gpu:,.0f}"),
            ("weights fp32", _gib(plan.weights)),
            ("gradients fp32", _gib(plan.gradients)),
            ("AdamW moments fp32", _gib(plan.optimizer)),
            ("weights for compute", _gib(plan.gathered_weights)),
            ("activations (this recipe)", _gib(plan.activations)),
            ("activations, no checkpointing", _gib(plan.activations_none)),
            ("activations, full checkpointing", _gib(plan.activations_full)),
            ("loss (logits)", _gib(plan.loss)),
            ("total per GPU", f"{_gib(plan.total)} of {gpu_memory_gib:g} GiB: "
                              f"{'fits' if fits else 'does NOT fit'}"),
        ])
    lines.append("")
    lines.append("fits on every stage" if fits_all else
                 "does not fit: add GPUs to dp_shard, raise tp/pp, turn on activation_checkpoint, "
                 "or lower train.micro_batch_size")
    return "\n".join(lines)


def _gib(value: float) -> str:
    return f"{value / GIB:,.2f} GiB"


def _table(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in rows)
    return [f"{k:<{width}}  {v}" for k, v in rows]

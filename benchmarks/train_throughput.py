"""Training throughput of pasture's Llama 3.2 1B on one GPU, next to Hugging Face, torchtitan and a matmul.

    python benchmarks/train_throughput.py [--steps 20] [--warmup 5] [--batch 8] [--seq 2048]
    python benchmarks/train_throughput.py --device cpu --preset tiny --batch 4 --seq 256 --steps 5 --warmup 2
        (a CPU run of the same harness at a small shape: checks it end to end without a GPU)

Runs, one after the other in one process, each timed over the same steps of random tokens:
- pasture: bf16 autocast over fp32 weights, torch.compile per block, chunked cross-entropy with
  gradients in the forward (its elementwise work compiled), SDPA (cuDNN/flash picked by torch) or
  FlexAttention with a document mask, fused AdamW;
- pasture + float8 (`train.float8`'s conversion: torchao rowwise and tensorwise linear layers
  in the blocks), when torchao is installed and the GPU has float8 (compute capability >= 8.9),
  or on CPU as a check;
- transformers `LlamaForCausalLM` of the same shape: SDPA, bf16 autocast, fused AdamW,
  eager and torch.compile;
- torchtitan 0.2.2's Llama 3 `Transformer` of the same shape, when torchtitan is importable: its
  default attention (SDPA, causal), bf16 autocast as its single-GPU trainer does, fused AdamW,
  eager and with torch.compile per block by its `apply_compile` plus its compiled cross-entropy
  (no activation checkpointing, like every row, though its trainer's default checkpoints every
  second block). It cannot tie the output matrix to the embedding, so it holds 263M more
  parameters at llama3.2-1b but does the same matmul FLOPs. At startup its logits are checked
  against pasture's for the same weights on a 2-layer model with the preset's head size, GQA
  ratio, FFN rule and rope;
- a bf16 8192^3 matmul, the practical ceiling of the GPU.

Prints tokens/s, MFU = flops_per_token x tokens/s / 989 TFLOP/s (H100 dense bf16), where
flops_per_token = 6N + 12·L·H·Q·T with N every matmul parameter including the output
projection (`pasture.model.info.flops_per_token`), the ratios to Hugging Face, and peak
memory against `pasture plan`'s prediction for the same shape. Without CUDA (and without
`--device cpu`) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import Callable

import torch

PEAK_BF16 = 989e12  # H100 SXM dense bf16


DEVICE = torch.device("cuda")


def _sync_time() -> float:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def _autocast():
    """bf16 autocast on the GPU; fp32 on CPU, where bf16 matmuls are emulated and slow."""
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=DEVICE.type == "cuda")


def matmul_tflops(n: int = 8192, repeats: int = 50) -> float:
    dtype = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=DEVICE, dtype=dtype)
    b = torch.randn(n, n, device=DEVICE, dtype=dtype)
    for _ in range(5):
        a @ b
    start = _sync_time()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (_sync_time() - start) / 1e12


def time_steps(step, steps: int, warmup: int, tokens_per_step: int) -> tuple[float, float]:
    """(tokens/s over the timed steps, peak GiB allocated; 0 on CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    start = _sync_time()
    for _ in range(steps):
        step()
    elapsed = _sync_time() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else 0.0
    return tokens_per_step * steps / elapsed, peak


def training_step(loss: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """The step every row times: `loss()` under autocast, backward, optimizer step."""

    def step():
        with _autocast():
            value = loss()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The peers' optimizer: AdamW with pasture's betas, fused on the GPU as pasture's is."""
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=DEVICE.type == "cuda")


def pasture_step(config, batch: int, seq: int, document_mask: bool, compile_blocks: bool, float8: str | None = None):
    from pasture.model import build
    from pasture.train.loss import cross_entropy_sum
    from pasture.train.schedule import OptimConfig, build_optimizer

    # the document mask runs on FlexAttention on the GPU, on SDPA with a dense mask on CPU (no flex backward there)
    backend = "flex" if document_mask and DEVICE.type == "cuda" else "sdpa"
    model = build(config, device=DEVICE, attention_backend=backend, seed=0)
    if float8:
        from pasture.train.float8 import apply_float8

        apply_float8(model, float8)
    if compile_blocks:
        for block in model.layers:
            block.compile()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4, fused=True))
    tokens = torch.randint(0, config.vocab_size, (batch, seq + 1), device=DEVICE)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    doc_ids = (torch.arange(seq, device=DEVICE) // 512).expand(batch, seq) if document_mask else None

    def loss():
        hidden = model(inputs, doc_ids, return_hidden=True)
        return cross_entropy_sum(hidden, model.output.weight, targets, compiled=compile_blocks) / targets.numel()

    return training_step(loss, optimizer)


def hf_step(config, batch: int, seq: int, compiled: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = config.rope_scaling
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.ffn_hidden_dim,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta,
        max_position_embeddings=config.max_seq_len, tie_word_embeddings=config.tie_embeddings,
        rope_scaling=None if rope is None else {
            "rope_type": "llama3", "factor": rope.factor, "low_freq_factor": rope.low_freq_factor,
            "high_freq_factor": rope.high_freq_factor,
            "original_max_position_embeddings": rope.original_max_position_embeddings},
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(hf_config).to(DEVICE)
    if compiled:
        model = torch.compile(model)
    tokens = torch.randint(0, config.vocab_size, (batch, seq), device=DEVICE)
    return training_step(lambda: model(input_ids=tokens, labels=tokens).loss, adamw(model))


def torchtitan_args(config, max_seq_len: int):
    """torchtitan 0.2.2 `TransformerModelArgs` with pasture's `config`'s shape, rope and norm.

    Its rope always applies the Llama 3.1 scaling, which factor 1 turns into the identity for
    presets without scaling. Its attention is its default: SDPA, causal.
    """
    from torchtitan.models.llama3 import TransformerModelArgs
    from torchtitan.models.llama3.model.args import RoPEScalingArgs

    rope = config.rope_scaling
    scaling = RoPEScalingArgs(scaling_factor=1.0) if rope is None else RoPEScalingArgs(
        rope.factor, rope.low_freq_factor, rope.high_freq_factor, rope.original_max_position_embeddings)
    return TransformerModelArgs(
        dim=config.dim, n_layers=config.n_layers, n_heads=config.n_heads, n_kv_heads=config.n_kv_heads,
        vocab_size=config.vocab_size, multiple_of=config.multiple_of, ffn_dim_multiplier=config.ffn_dim_multiplier,
        norm_eps=config.norm_eps, rope_theta=config.rope_theta, rope_scaling_args=scaling, max_seq_len=max_seq_len)


def torchtitan_model(config, max_seq_len: int, device: torch.device | str) -> torch.nn.Module:
    """torchtitan's Llama 3 as its trainer makes it: built on meta, `to_empty`, then its own `init_weights`."""
    from torchtitan.models.llama3 import Transformer

    with torch.device("meta"):
        model = Transformer(torchtitan_args(config, max_seq_len))
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device(device))
    return model


def torchtitan_check(config, seq: int) -> str:
    """Two lines: torchtitan's logits against pasture's for the same weights, and its own size count.

    The logits are compared in fp32 on the CPU, on a 2-layer model with `config`'s head size, GQA
    ratio, FFN rule, rope and norm, at positions past 4096 where the Llama 3.1 rope scaling acts.
    Raises ImportError when torchtitan is not importable.
    """
    import torchtitan
    from torchtitan.models.llama3 import Transformer

    from pasture.model import build
    from pasture.model.convert import half_to_interleaved, permute_qk
    from pasture.model.info import flops_per_token, num_params

    group = config.n_heads // config.n_kv_heads
    small = config.replace(dim=2 * group * config.head_dim, n_layers=2, n_heads=2 * group, n_kv_heads=2,
                           vocab_size=1024)
    ours = build(small, device="cpu", attention_backend="sdpa", seed=0)
    theirs = torchtitan_model(small, 4096 + 128, "cpu")
    theirs.load_state_dict(permute_qk(ours.state_dict(), small, half_to_interleaved))
    tokens = torch.randint(0, small.vocab_size, (2, 128), generator=torch.Generator().manual_seed(0))
    positions = (torch.arange(128) + 4096).expand(2, 128)
    with torch.no_grad():
        expected, got = ours(tokens, positions=positions), theirs(tokens, positions=positions)
    diff = (got - expected).abs().max().item()
    verdict = "match" if diff <= 1e-4 * expected.abs().max().item() else "DO NOT match"
    with torch.device("meta"):
        full = Transformer(torchtitan_args(config, seq))
    n, fpt = full.model_args.get_nparams_and_flops(full, seq)
    version = f"torchtitan {torchtitan.__version__}"
    return (f"{version}: logits {verdict} pasture's for the same weights (max |diff| {diff:.1e}; 2 layers, "
            f"dim {small.dim}, {small.n_heads}/{small.n_kv_heads} heads, positions 4096-4223)\n"
            f"{version}: {n / 1e9:.3f} B parameters (untied output; pasture {num_params(config) / 1e9:.3f} B), "
            f"{fpt:.4g} FLOPs/token by its own count (pasture {flops_per_token(config, seq):.4g})")


def torchtitan_step(config, batch: int, seq: int, compiled: bool):
    """torchtitan's step as its trainer runs it on one GPU, less its data loader and logging."""
    from torchtitan.components.loss import build_cross_entropy_loss
    from torchtitan.config import JobConfig
    from torchtitan.config.job_config import Compile
    from torchtitan.models.llama3.infra.parallelize import apply_compile

    model = torchtitan_model(config, seq, DEVICE)
    job = JobConfig(compile=Compile(enable=compiled))
    if compiled:
        apply_compile(model, job.compile)
    cross_entropy = build_cross_entropy_loss(job)  # torch.compile'd when job.compile is on, as in its trainer
    tokens = torch.randint(0, config.vocab_size, (batch, seq + 1), device=DEVICE)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    return training_step(lambda: cross_entropy(model(inputs), targets) / targets.numel(), adamw(model))


def float8_recipes() -> list[str]:
    """torchao float8 recipes this machine can run: none without torchao or on a GPU older
    than sm89; on CPU (slow float8 matmuls) they run as a check of the harness."""
    from pasture.train.float8 import FLOAT8_RECIPES

    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        return []
    if DEVICE.type == "cuda" and torch.cuda.get_device_capability() < (8, 9):
        return []
    return [r for r in FLOAT8_RECIPES if r != "none"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--preset", default="llama3.2-1b")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--no-compile", action="store_true", help="eager only (default on CPU)")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        print("train_throughput: no CUDA device; this benchmark needs a GPU (skipped; --device cpu runs a small check)")
        return 0
    compile_runs = DEVICE.type == "cuda" and not args.no_compile

    from pasture.model.config import preset
    from pasture.model.info import flops_per_token, num_params
    from pasture.train.parallel import Layout, ParallelConfig
    from pasture.train.plan import memory_plan

    config = preset(args.preset)
    tokens_per_step = args.batch * args.seq
    fpt = flops_per_token(config, args.seq)
    predicted = memory_plan(config, Layout(1, 1, 1, 1, 1), ParallelConfig(), args.seq, args.batch, 1).total / 2**30
    device_name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "CPU"
    print(f"{device_name} | torch {torch.__version__} | {args.preset} ({num_params(config) / 1e9:.3f} B) "
          f"| batch {args.batch} x {args.seq} | {fpt:.4g} FLOPs/token | pasture plan predicts {predicted:.1f} GiB")
    titan_missing = ""
    try:
        print(torchtitan_check(config, args.seq))
    except ImportError as error:
        titan_missing = f"skipped, torchtitan not importable: {error}"
    except Exception as error:  # the peer's trouble must not cost pasture's rows
        titan_missing = f"skipped, torchtitan check failed: {type(error).__name__}: {error}"
    if titan_missing:
        print(f"torchtitan: {titan_missing}")
    matmul_size = 8192 if DEVICE.type == "cuda" else 2048
    matmul = matmul_tflops(matmul_size, 50 if DEVICE.type == "cuda" else 5)
    print(f"{'bf16' if DEVICE.type == 'cuda' else 'fp32'} matmul {matmul_size}^3: {matmul:.2f} TFLOP/s")

    label = "compile, chunked CE" if compile_runs else "eager, chunked CE"
    runs = [(f"pasture ({label}, SDPA)", lambda: pasture_step(config, args.batch, args.seq, False, compile_runs)),
            ("pasture + document mask", 
             lambda: pasture_step(config, args.batch, args.seq, True, compile_runs))]
    runs += [(f"pasture + float8 {r}", lambda r=r: pasture_step(config, args.batch, args.seq, False, compile_runs, r))
             for r in float8_recipes()]
    runs += [("transformers eager (SDPA)", lambda: hf_step(config, args.batch, args.seq, False))]
    if compile_runs:
        runs += [("transformers + torch.compile", lambda: hf_step(config, args.batch, args.seq, True))]
    titan = [("torchtitan eager (SDPA)", False)] + ([("torchtitan + compile per block", True)] if compile_runs else [])
    skipped = {name: titan_missing for name, _ in titan if titan_missing}
    runs += [(name, lambda c=c: torchtitan_step(config, args.batch, args.seq, c))
             for name, c in titan if not titan_missing]
    results: dict[str, tuple[float, float]] = {}
    for name, make in runs:
        try:
            results[name] = time_steps(make(), args.steps, args.warmup, tokens_per_step)
            print(f"{name}: {results[name][0]:,.0f} tokens/s, peak {results[name][1]:.1f} GiB", flush=True)
        except torch.cuda.OutOfMemoryError:
            skipped[name] = "out of memory"
            print(f"{name}: out of memory")
        except Exception as error:  # a failing row must not cost the rows after it and the table
            skipped[name] = f"failed: {type(error).__name__}: {error}"
            print(f"{name}: {skipped[name]}", flush=True)
        gc.collect()
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
    reference = results.get("transformers eager (SDPA)", (None, None))[0]
    on_gpu = DEVICE.type == "cuda"
    print(f"\n{'run':<42} {'tokens/s':>10} {'MFU':>6} {'matmul':>7} {'vs HF':>6} {'peak GiB':>9} {'plan':>6}")
    for name, (tps, peak) in results.items():
        ratio = f"{tps / reference:.2f}x" if reference else "-"
        plan_ratio = f"{peak / predicted:.2f}" if name.startswith("pasture") and on_gpu else "-"
        mfu = f"{fpt * tps / PEAK_BF16:.1%}" if on_gpu else "-"  # the 989 TFLOP/s peak is an H100's
        of_matmul = f"{fpt * tps / (matmul * 1e12):.1%}"  # achieved FLOP/s over the measured matmul's
        print(f"{name:<42} {tps:>10,.0f} {mfu:>6} {of_matmul:>7} {ratio:>6} {peak:>9.1f} {plan_ratio:>6}")
    for name, reason in skipped.items():
        print(f"{name:<42} {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

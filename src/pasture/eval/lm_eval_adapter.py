"""pasture models inside lm-eval: `lm_eval --model pasture --model_args path=MODEL[,tokenizer=...]`.

`PastureLM` answers lm-eval's three request types with the same code `pasture eval` uses, so
both give the same numbers on the same items: `loglikelihood` (requests sharing a context are
scored as one group, the context run once), `loglikelihood_rolling` (disjoint windows) and
`generate_until` (the serving engine). Importing this module registers the model name; the
`pasture-lm-eval.pth` hook (see lm_eval_hook) does it whenever lm-eval's registry loads.
"""

from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from pasture.eval.lm import EvalModel, Generation, load_eval_model


class PastureLM(LM):
    def __init__(self, path: str | None = None, tokenizer: str | None = None, batch_size: int | str = 32,
                 device: str | None = None, dtype: str = "float32", model: EvalModel | None = None,
                 **ignored) -> None:
        super().__init__()
        if model is None:
            if path is None:
                raise ValueError("--model_args needs path=MODEL (a GGUF file, checkpoint folder, run folder or preset)")
            if device and device.startswith("cuda") and not torch.cuda.is_available():
                device = "cpu"  # lm-eval's CLI passes --device cuda by default; its HF backend falls back too
            size = 32 if str(batch_size) == "auto" else int(str(batch_size).split(":")[0])
            model = load_eval_model(path, tokenizer, batch_size=size, device=device, dtype=getattr(torch, dtype))
        self.model = model

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args) for r in requests]
        by_context: dict[str, list[int]] = {}
        for i, (context, _) in enumerate(pairs):
            by_context.setdefault(context, []).append(i)
        groups = [[pairs[i] for i in members] for members in by_context.values()]
        out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for members, scores in zip(by_context.values(), self.model.loglikelihood(groups)):
            for i, score in zip(members, scores):
                out[i] = score
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        return self.model.loglikelihood_rolling([r.args[0] for r in requests])

    def generate_until(self, requests) -> list[str]:
        by_kwargs: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            kwargs = dict(r.args[1])
            until = kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
            key = (until, int(kwargs.get("max_gen_toks", 256)), temperature)
            by_kwargs.setdefault(key, []).append(i)
        out = [""] * len(requests)
        for (until, max_tokens, temperature), members in by_kwargs.items():
            texts = self.model.generate([requests[i].args[0] for i in members],
                                        Generation(until, max_tokens, temperature))
            for i, samples in zip(members, texts):
                out[i] = samples[0]
        return out


register_model("pasture")(PastureLM)

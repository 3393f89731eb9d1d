"""A model and its tokenizer seen as lm-eval sees a language model: log-likelihoods of
(context, continuation) pairs, rolling log-likelihoods of documents, and generation.

Tokenization follows lm-eval's `_encode_pair`: trailing spaces of the context move into the
continuation, `context + continuation` is encoded whole and split after the context's tokens,
and an empty context becomes the prefix token (BOS, else end-of-text). BOS is prepended when the
tokenizer says so (`add_bos`, from a Hugging Face tokenizer's config or a GGUF file) and by
default otherwise (Llama 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pasture.errors import PastureError
from pasture.eval.scoring import LoglikelihoodScorer, Request, Score, rolling_windows
from pasture.model import Transformer
from pasture.model.config import PRESETS
from pasture.runs import load as load_model
from pasture.tokenizer import Tokenizer


class EvalModelError(PastureError):
    pass


@dataclass
class Generation:
    """How generate-until requests sample: greedy by default, `n` samples per prompt."""

    until: tuple[str, ...]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 1234


class EvalModel:
    """What every evaluation path calls; one scorer and (when generating) one engine per model."""

    def __init__(self, model: Transformer, tokenizer, batch_size: int = 32, add_bos: bool | None = None,
                 max_length: int | None = None, progress: bool = True, name: str = "model") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.add_bos = getattr(tokenizer, "add_bos", True) if add_bos is None else add_bos
        bos = getattr(tokenizer, "bos_id", None)
        self.prefix_token_id = bos if bos is not None else tokenizer.eos_id
        self.max_length = max_length or model.config.max_seq_len
        self.progress = progress
        self.scorer = LoglikelihoodScorer(model, batch_size, self.max_length, progress)
        self._engine = None

    # ------------------------------------------------------------------ tokens

    def encode(self, text: str) -> list[int]:
        ids = list(self.tokenizer.encode(text, bos=self.add_bos))
        vocab = self.model.config.vocab_size
        if ids and max(ids) >= vocab:
            raise EvalModelError(f"the tokenizer gives id {max(ids)} but the model's vocabulary has {vocab} entries; "
                                 "pass the tokenizer the model was trained with (--tokenizer)")
        return ids

    def encode_pair(self, context: str, continuation: str) -> Request:
        if not context:
            return [self.prefix_token_id], list(self.tokenizer.encode(continuation, bos=False))
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        return whole[:len(context_ids)], whole[len(context_ids):]

    # ------------------------------------------------------------------ scoring

    def loglikelihood(self, groups: list[list[tuple[str, str]]], desc: str = "loglikelihood") -> list[list[Score]]:
        """(log-probability, greedy) of each continuation; requests of a group share their prefix."""
        encoded = [[self.encode_pair(c, x) for c, x in group] for group in groups]
        return self.scorer.score(encoded, desc)

    def loglikelihood_rolling(self, texts: list[str], desc: str = "documents") -> list[float]:
        """Total log-probability of each text, conditioned only on the prefix token."""
        windows = [rolling_windows(list(self.tokenizer.encode(t, bos=False)), self.prefix_token_id, self.max_length)
                   for t in texts]
        flat = [[w] for ws in windows for w in ws]
        scores = iter(self.scorer.score(flat, desc))
        return [sum(next(scores)[0][0] for _ in ws) for ws in windows]

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: list[str], how: Generation) -> list[list[str]]:
        """`how.n` continuations per prompt, cut before the first stop string, through the serving engine."""
        # The engine is imported here: log-likelihood evaluation does not need the serving stack.
        from pasture.serve import Engine, SamplingParams

        if self._engine is None:
            self._engine = Engine(self.model, self.tokenizer, max_batch_size=self.batch_size,
                                  max_seq_len=self.max_length)
        ids = [self.encode(p) for p in prompts]
        params = [SamplingParams(max_tokens=how.max_tokens, temperature=how.temperature, top_p=how.top_p,
                                 seed=how.seed + sample, stop=how.until)
                  for _ in ids for sample in range(how.n)]
        room = self._engine.max_seq_len - how.max_tokens
        if room < 1:
            raise EvalModelError(f"{how.max_tokens} new tokens leave no room for a prompt in {self._engine.max_seq_len} "
                                 "positions; lower the task's max_gen_toks")
        prompts_ids = [p[-room:] for p in ids for _ in range(how.n)]
        results = self._engine.generate(prompts_ids, params, progress=self.progress)
        texts = [r.text for r in results]
        return [texts[i * how.n:(i + 1) * how.n] for i in range(len(prompts))]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def load_eval_model(model: str, tokenizer: str | None = None, *, batch_size: int = 32, device: str | None = None,
                    dtype: torch.dtype = torch.float32, progress: bool = True) -> EvalModel:
    """A model (preset, pasture / HF / Meta / run checkpoint, or GGUF file) ready to evaluate."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    network, _ = load_model(model, device=device, dtype=dtype)
    if tokenizer is None:  # a preset has no files: Meta's Llama 3 tokenizer; anything else carries its own
        tokenizer = "llama3" if model in PRESETS and not Path(model).exists() else model
    tok = Tokenizer.load(tokenizer)
    return EvalModel(network, tok, batch_size=batch_size, progress=progress, name=str(model))

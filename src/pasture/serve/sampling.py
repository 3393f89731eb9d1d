"""Per-request sampling over a batch of logits.

Each row of a decode batch belongs to a different request with its own parameters. The
batch is processed with row-wise tensor operations only (softmax, sort, cumsum along the
vocabulary), and every sampled row draws one uniform number from its own request's
generator, so a seeded request gets the same tokens whatever else shares its batch.

Order, as vLLM applies it: penalties, then temperature, then top-k, top-p and min-p on the
tempered distribution, then an inverse-CDF draw. Log-probs are those of the model's raw
distribution (before penalties and temperature), as the OpenAI API reports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples. `temperature=0` is greedy (argmax after penalties)."""

    max_tokens: int = 64
    temperature: float = 0.6  # Meta's default for Llama 3
    top_p: float = 0.9
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # drop tokens below min_p times the most likely one's probability
    repetition_penalty: float = 1.0  # >1 discourages every token of the prompt and output (HF/vLLM rule)
    frequency_penalty: float = 0.0  # subtracted once per earlier occurrence in the output
    presence_penalty: float = 0.0  # subtracted once if the token occurred in the output
    seed: int | None = None  # None: a fresh random stream
    stop_token_ids: tuple[int, ...] = ()  # in addition to the engine's (the tokenizer's) stop ids
    stop: tuple[str, ...] = ()  # stop strings; the text is cut before them
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False  # do not stop on the engine's stop ids (benchmarks)
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: also the k most likely tokens

    def __post_init__(self) -> None:
        # accept lists from JSON without making the dataclass unhashable
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        object.__setattr__(self, "stop", tuple(stop))
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(self.max_tokens >= 1, f"max_tokens must be at least 1, got {self.max_tokens}")
        need(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        need(self.top_k >= 0, f"top_k must be >= 0 (0 is off), got {self.top_k}")
        need(0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}")
        need(self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        need(-2 <= self.frequency_penalty <= 2, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        need(-2 <= self.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        need(self.logprobs is None or self.logprobs >= 0, f"logprobs must be >= 0, got {self.logprobs}")
        need(all(s for s in self.stop), "stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1 or self.frequency_penalty != 0 or self.presence_penalty != 0

    @property
    def sorts(self) -> bool:
        """Top-k and top-p need the distribution sorted; the draw then walks it in that order."""
        return self.top_k > 0 or self.top_p < 1


@dataclass
class TokenLogprob:
    """Log-probability of one generated token, with the `top` most likely alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class SamplerRow:
    """What the sampler needs from one request, kept for the request's life."""

    params: SamplingParams
    generator: torch.Generator | None  # CPU generator; None for greedy rows
    prompt_ids: list[int]
    output_counts: torch.Tensor | None = None  # [vocab] counts of output tokens, for penalties
    prompt_seen: torch.Tensor | None = None  # [vocab] bool, for the repetition penalty

    @classmethod
    def create(cls, params: SamplingParams, prompt_ids: list[int], vocab_size: int, device: torch.device) -> "SamplerRow":
        generator = None
        if not params.greedy:
            generator = torch.Generator()
            generator.manual_seed(params.seed if params.seed is not None else int(torch.randint(2**62, ()).item()))
        row = cls(params, generator, prompt_ids)
        if params.penalized:
            row.output_counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
            row.prompt_seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            row.prompt_seen[torch.tensor(prompt_ids, device=device)] = True
        return row

    def record(self, token_id: int) -> None:
        if self.output_counts is not None:
            self.output_counts[token_id] += 1

    def penalize(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply this request's penalties to its logits row [vocab]."""
        p = self.params
        if p.repetition_penalty != 1:
            seen = self.prompt_seen | (self.output_counts > 0)
            scaled = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
            logits = torch.where(seen, scaled, logits)
        if p.frequency_penalty:
            logits = logits - p.frequency_penalty * self.output_counts
        if p.presence_penalty:
            logits = logits - p.presence_penalty * (self.output_counts > 0).float()
        return logits


# How many of the most likely tokens top-k/top-p rows sort first, then next (see `_filter_sorted`).
CANDIDATES = (256, 4096)


def _draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: the first index whose cumulative (unnormalised) mass exceeds u * total."""
    cdf = probs.cumsum(dim=-1)
    target = uniforms[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def _filter_sorted(probs: torch.Tensor, rows: list[SamplerRow]) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k, top-p and min-p over the most likely tokens in descending order; returns (kept mass, their ids).

    The tokens kept are always a most-likely-first run, so only the run's candidates need sorting:
    the most likely `CANDIDATES[0]`, then more only when some row's run could reach past them (its
    top-k is larger and their mass is still within its top-p), the whole vocabulary last. The result
    is the full sort's; the cost, at a usual top-p of a trained model, a partial top-k instead of a
    sort of the vocabulary (~20x less on CPU, RESULTS.md)."""
    vocab, device = probs.shape[-1], probs.device
    top_k = torch.tensor([r.params.top_k or vocab for r in rows], device=device)
    top_p = torch.tensor([r.params.top_p for r in rows], device=device, dtype=probs.dtype)
    min_p = torch.tensor([r.params.min_p for r in rows], device=device, dtype=probs.dtype)
    for count in [c for c in CANDIDATES if c < vocab] + [vocab]:
        sorted_probs, order = probs.topk(count, dim=-1) if count < vocab else probs.sort(dim=-1, descending=True)
        mass = sorted_probs.cumsum(dim=-1)
        if count == vocab or bool(((top_k <= count) | (mass[:, -1] > top_p)).all()):  # the next one is dropped
            break
    ranks = torch.arange(count, device=device)[None]
    drop = ranks >= top_k[:, None]
    drop |= mass - sorted_probs > top_p[:, None]  # Meta's rule: drop a token once the mass before it exceeds top_p
    drop |= sorted_probs < min_p[:, None] * sorted_probs[:, :1]
    return sorted_probs.masked_fill(drop, 0.0), order


def sample(logits: torch.Tensor, rows: list[SamplerRow]) -> tuple[torch.Tensor, list[TokenLogprob | None]]:
    """One token per row of `logits` [B, vocab] (fp32), and log-probs for rows that asked."""
    B = logits.shape[0]
    logprobs: list[TokenLogprob | None] = [None] * B
    want_logprobs = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    raw = logits
    if any(r.params.penalized for r in rows):
        logits = torch.stack([r.penalize(logits[i]) if r.params.penalized else logits[i] for i, r in enumerate(rows)])
    greedy = [i for i, r in enumerate(rows) if r.params.greedy]
    if len(greedy) == B:
        tokens = logits.argmax(dim=-1)
    else:  # a sampled row's argmax would be overwritten: over a large vocabulary it costs as much as a softmax
        tokens = torch.zeros(B, dtype=torch.long, device=logits.device)
        if greedy:
            index = torch.tensor(greedy, device=logits.device)
            tokens[index] = logits[index].argmax(dim=-1)
    for sorted_group in (False, True):
        group = [i for i, r in enumerate(rows) if not r.params.greedy and r.params.sorts == sorted_group]
        if not group:
            continue
        index = torch.tensor(group, device=logits.device)
        temps = torch.tensor([rows[i].params.temperature for i in group], device=logits.device)
        probs = torch.softmax((logits if len(group) == B else logits[index]) / temps[:, None], dim=-1)
        uniforms = torch.cat([torch.rand(1, generator=rows[i].generator) for i in group]).to(logits.device)
        if sorted_group:
            kept, order = _filter_sorted(probs, [rows[i] for i in group])
            chosen = order.gather(-1, _draw(kept, uniforms)[:, None]).squeeze(-1)
        else:
            if any(rows[i].params.min_p for i in group):
                min_p = torch.tensor([rows[i].params.min_p for i in group], device=logits.device)
                probs = probs.masked_fill(probs < min_p[:, None] * probs.amax(-1, keepdim=True), 0.0)
            chosen = _draw(probs, uniforms)
        tokens[index] = chosen
    if want_logprobs:
        index = torch.tensor(want_logprobs, device=logits.device)
        log_probs = torch.log_softmax(raw[index].float(), dim=-1)
        chosen = log_probs.gather(-1, tokens[index][:, None]).squeeze(-1).tolist()
        k = max(rows[i].params.logprobs for i in want_logprobs)
        top_values, top_ids = log_probs.topk(k, dim=-1) if k else (log_probs[:, :0], log_probs[:, :0].long())
        for j, i in enumerate(want_logprobs):
            n = rows[i].params.logprobs
            top = list(zip(top_ids[j, :n].tolist(), top_values[j, :n].tolist()))
            logprobs[i] = TokenLogprob(int(tokens[i]), chosen[j], top)
    return tokens, logprobs

"""Serving: the continuous-batching engine, per-request sampling and quantized decode.

    from pasture.serve import Engine, SamplingParams
    engine = Engine(model, tokenizer, max_batch_size=32)
    results = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=128))
"""

from pasture.serve.engine import Engine, EngineError, EngineStats, GenerationResult, RequestHandle, TokenEvent
from pasture.serve.sampling import SamplingParams, TokenLogprob

__all__ = [
    "Engine", "EngineError", "EngineStats", "GenerationResult", "RequestHandle", "SamplingParams", "TokenEvent",
    "TokenLogprob",
]

"""Decode steps replayed as CUDA graphs that the engine captures itself.

Why not `torch.compile(mode="reduce-overhead")`: its CUDA-graph trees keep their state in
thread-local storage that is set up on the thread that first imports them, and each engine
decodes on its own thread, so the second engine of a process failed (`get_tree_manager`
asserts) or crashed. Plain `torch.cuda.CUDAGraph`s around the (compiled or eager) step have
no such state: one graph per input shape, all sharing one memory pool, replayed after the
step's inputs are copied into the graph's static buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

DecodeStep = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    tokens: torch.Tensor  # static inputs the graph reads
    starts: torch.Tensor
    logits: torch.Tensor  # static output the graph writes


class GraphedDecodeStep:
    """`step(tokens [n, 1], starts [n], key_len) -> logits [n, vocab]`, replayed from a graph per (n, key_len).

    The returned logits live in the graph's output buffer: read them before the next call.
    Callers keep the number of shapes small (the engine pads rows and key lengths to buckets).
    """

    def __init__(self, step: DecodeStep) -> None:
        self.step = step
        self.captured: dict[tuple[int, int], _Captured] = {}
        self.pool = None  # one memory pool for all graphs: only one replays at a time

    def __call__(self, tokens: torch.Tensor, starts: torch.Tensor, key_len: int) -> torch.Tensor:
        key = (tokens.shape[0], key_len)
        captured = self.captured.get(key)
        if captured is None:
            captured = self.captured[key] = self._capture(tokens, starts, key_len)
        captured.tokens.copy_(tokens)
        captured.starts.copy_(starts)
        captured.graph.replay()
        return captured.logits

    def _capture(self, tokens: torch.Tensor, starts: torch.Tensor, key_len: int) -> _Captured:
        static_tokens, static_starts = tokens.clone(), starts.clone()
        for static in (static_tokens, static_starts):  # a compiled step specialises on each shape's rows
            torch._dynamo.mark_static(static, 0)
        # Warm-up on a side stream, as torch.cuda.graphs' docs ask: compilation, autotuning and lazy
        # initialisation happen here, outside the capture. The step writes this step's keys and values,
        # the very writes the replay repeats, so running it first changes nothing.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.step(static_tokens, static_starts, key_len)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (request submission, the server) may use CUDA during a capture
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            logits = self.step(static_tokens, static_starts, key_len)
        self.pool = graph.pool()
        return _Captured(graph, static_tokens, static_starts, logits)

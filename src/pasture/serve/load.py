"""A bounded load test for an OpenAI-compatible server: N concurrent streaming chats.

Each client sends one streaming chat request and reads it to `[DONE]`; the run stops
when all have answered or the deadline passes, so it can never run away. It reports
throughput and latency percentiles, and every reply, so a caller can check that no
request saw another's text.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class LoadReport:
    clients: int
    seconds: float
    completion_tokens: int
    errors: list[str] = field(default_factory=list)
    replies: list[str | None] = field(default_factory=list)  # in request order; None for a failed one
    latencies_s: list[float] = field(default_factory=list)
    first_token_s: list[float] = field(default_factory=list)

    def percentile(self, values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else \
            (values[0] if values else float("nan"))

    def summary(self) -> dict[str, Any]:
        return {
            "clients": self.clients, "errors": len(self.errors), "seconds": round(self.seconds, 3),
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": round(self.completion_tokens / self.seconds, 1) if self.seconds else 0.0,
            "latency_p50_s": round(self.percentile(self.latencies_s, 50), 3),
            "latency_p99_s": round(self.percentile(self.latencies_s, 99), 3),
            "first_token_p50_s": round(self.percentile(self.first_token_s, 50), 3),
            "first_token_p99_s": round(self.percentile(self.first_token_s, 99), 3),
        }


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, Any], report: LoadReport, index: int) -> None:
    start = time.perf_counter()
    first = None
    text, tokens = [], 0
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                report.errors.append(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    report.errors.append(chunk["error"]["message"])
                    return
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices", []):
                    piece = choice.get("delta", {}).get("content")
                    if piece:
                        first = first or time.perf_counter()
                        text.append(piece)
    except httpx.HTTPError as e:
        report.errors.append(f"{type(e).__name__}: {e}")
        return
    report.latencies_s.append(time.perf_counter() - start)
    if first is not None:
        report.first_token_s.append(first - start)
    report.completion_tokens += tokens
    report.replies[index] = "".join(text)


async def _run(base_url: str, bodies: list[dict[str, Any]], deadline_s: float, api_key: str | None) -> LoadReport:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    report = LoadReport(clients=len(bodies), seconds=0.0, completion_tokens=0, replies=[None] * len(bodies))
    async with httpx.AsyncClient(timeout=deadline_s, limits=limits, headers=headers) as client:
        start = time.perf_counter()
        tasks = [asyncio.create_task(_one(client, base_url + "/v1/chat/completions", b, report, i))
                 for i, b in enumerate(bodies)]
        done, pending = await asyncio.wait(tasks, timeout=deadline_s)
        for task in pending:
            task.cancel()
            report.errors.append("no answer before the deadline")
        report.seconds = time.perf_counter() - start
    return report


def run_load(base_url: str, model: str, conversations: list[list[dict[str, Any]]], max_tokens: int = 64,
             temperature: float = 0.0, deadline_s: float = 300.0, api_key: str | None = None,
             first_seed: int = 0) -> LoadReport:
    """One concurrent streaming chat per conversation, seeded `first_seed`, `first_seed + 1`, ...;
    stops by `deadline_s` at the latest. Replies come back in the conversations' order."""
    bodies = [{"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
               "seed": first_seed + i, "stream": True, "stream_options": {"include_usage": True}}
              for i, messages in enumerate(conversations)]
    return asyncio.run(_run(base_url, bodies, deadline_s, api_key))

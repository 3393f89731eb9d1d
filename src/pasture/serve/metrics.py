"""Prometheus text exposition for `/metrics`: counters, gauges and latency histograms.

Small enough to write out rather than depend on prometheus_client: the server only
needs monotonic counters, two gauges read at scrape time and fixed-bucket histograms.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
        out += [f"{name}_sum {self.total}", f"{name}_count {cumulative}"]
        return out


class ServerMetrics:
    """What the server counts; `gauges` are read from the engine when scraped."""

    def __init__(self, gauges: dict[str, Callable[[], float]]) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.latency = Histogram()
        self.time_to_first_token = Histogram()
        self.gauges = gauges

    def request_done(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def tokens(self, prompt: int, generated: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.generated_tokens += generated

    def timing(self, latency: float, first_token: float | None) -> None:
        with self._lock:
            self.latency.observe(latency)
            if first_token is not None:
                self.time_to_first_token.observe(first_token)

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP pasture_requests_total Requests answered, by endpoint and HTTP status.",
                     "# TYPE pasture_requests_total counter"]
            lines += [f'pasture_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP pasture_prompt_tokens_total Prompt tokens processed.",
                      "# TYPE pasture_prompt_tokens_total counter",
                      f"pasture_prompt_tokens_total {self.prompt_tokens}",
                      "# HELP pasture_generation_tokens_total Tokens generated.",
                      "# TYPE pasture_generation_tokens_total counter",
                      f"pasture_generation_tokens_total {self.generated_tokens}"]
            for name, read in self.gauges.items():
                lines += [f"# TYPE pasture_{name} gauge", f"pasture_{name} {read()}"]
            lines += ["# HELP pasture_request_latency_seconds Time from request to last token.",
                      "# TYPE pasture_request_latency_seconds histogram",
                      *self.latency.lines("pasture_request_latency_seconds"),
                      "# HELP pasture_time_to_first_token_seconds Time from request to first token.",
                      "# TYPE pasture_time_to_first_token_seconds histogram",
                      *self.time_to_first_token.lines("pasture_time_to_first_token_seconds")]
        return "\n".join(lines) + "\n"

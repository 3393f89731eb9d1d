"""The inference engine: continuous batching over a slot KV cache, one model forward.

A background thread owns the model and the cache. Each iteration it admits waiting
requests into free cache rows (prefilling, several prompts per forward, only what the
prefix cache does not already hold), then runs one decode step for every running
request, samples each row with its own parameters and streams the new token to the
request's listener. A request leaves as soon as it stops; the next waiting one takes its
row before the next decode step.

Three ways in, all thread-safe:

    engine = Engine(model, tokenizer, max_batch_size=32)
    results = engine.generate(["Once upon", [1, 2, 3]], SamplingParams(temperature=0))
    handle = engine.submit(prompt_ids, params, on_event=callback)   # any thread
    async for event in engine.stream(prompt_ids, params): ...        # asyncio; closing it cancels

`engine.stats()` gives queue depth and counters for /metrics.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator, Sequence

import torch

from pasture.model.llama import Transformer
from pasture.serve.cuda_graphs import GraphedDecodeStep
from pasture.serve.kv_cache import SlotCache, StepCache, common_prefix_length, step_inputs
from pasture.serve.sampling import SamplerRow, SamplingParams, TokenLogprob, sample

Prompt = str | Sequence[int]

# A queued prompt sharing at least this many more tokens with one being prefilled than the cache
# holds (a system prompt, few-shot examples) waits one prefill to copy them rather than recompute.
PREFIX_WORTH_WAITING = 32


class EngineError(RuntimeError):
    """The engine failed while running a request (the message says why)."""


@dataclass
class TokenEvent:
    """What a request's listener receives after each step: new tokens and text, and the end.

    `text` is the new text since the previous event. Text that could still turn out to be
    the start of a stop string, or an incomplete UTF-8 character, is held back until known.
    """

    request_id: int
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None = None
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    result: "GenerationResult | None" = None  # set on the last event


@dataclass
class GenerationResult:
    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int]  # generated ids; a stop id that ended generation is not included
    text: str  # decoded token_ids, cut before a stop string ("" without a tokenizer)
    finish_reason: str  # "stop" | "length" | "abort" | "error"
    stop_reason: int | str | None = None  # the stop id or stop string that ended it
    logprobs: list[TokenLogprob] | None = None
    cached_tokens: int = 0  # prompt tokens whose keys/values came from the prefix cache
    error: str | None = None
    latency_s: float = 0.0  # submission to last token
    time_to_first_token_s: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class EngineStats:
    """Counters since start, and the current queue, for /metrics."""

    waiting: int  # queue depth: submitted, not yet in the batch
    running: int
    max_batch_size: int
    requests_submitted: int
    requests_finished: int
    requests_aborted: int
    prompt_tokens: int
    prefix_cached_tokens: int
    generation_tokens: int
    decode_steps: int


class RequestHandle:
    """A submitted request: iterate it for events, `result()` to wait, `cancel()` to free its row."""

    def __init__(self, request_id: int, engine: "Engine") -> None:
        self.request_id = request_id
        self._engine = engine
        self._events: queue.SimpleQueue[TokenEvent] = queue.SimpleQueue()
        self._done = threading.Event()
        self._result: GenerationResult | None = None
        self.cancelled = False

    def cancel(self) -> None:
        """Stop generating; the row is freed before the next decode step. Safe from any thread."""
        self.cancelled = True
        self._engine._wake()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> GenerationResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s")
        assert self._result is not None
        if self._result.finish_reason == "error":
            raise EngineError(self._result.error)
        return self._result

    def __iter__(self) -> Iterator[TokenEvent]:
        while True:
            event = self._events.get()
            yield event
            if event.finished:
                return

    def _publish(self, event: TokenEvent) -> None:
        self._events.put(event)
        if event.finished:
            self._result = event.result
            self._done.set()


class _Request:
    """Engine-side state of one request (touched only by the engine thread)."""

    def __init__(self, handle: RequestHandle, prompt: list[int], params: SamplingParams, max_tokens: int,
                 stop_ids: frozenset[int], sampler: SamplerRow, on_event: Callable[[TokenEvent], None] | None) -> None:
        self.handle = handle
        self.prompt = prompt
        self.params = params
        self.max_tokens = max_tokens
        self.stop_ids = stop_ids
        self.sampler = sampler
        self.on_event = on_event
        self.output: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.next_token = -1  # sampled, not yet fed through the model
        self.text = ""  # decoded output[:text_tokens]; the tokens after it do not end a character yet
        self.text_tokens = 0
        self.text_window = 0  # where the next decode starts: the run of tokens added to `text` last, for context
        self.sent = 0  # characters of `text` already streamed
        self.cached_tokens = 0
        self.submitted = time.perf_counter()
        self.first_token_at = 0.0


class Engine:
    """Continuous-batching generation with a model's own forward (see the module docstring).

    model: a `Transformer` in eval mode, on its device and dtype.
    tokenizer: optional; needed for string prompts, `text` and stop strings. Its
        `stop_tokens` end every request unless `ignore_eos`.
    max_batch_size: cache rows, i.e. requests decoded together.
    max_seq_len: positions per row (prompt + output); default min(model's, 4096).
    max_prefill_tokens: prompt tokens prefilled per iteration before the next decode step,
        so long prompts do not stall running requests for long (at least one is admitted);
        prompts prefilled together in one forward count as padded to the longest.
    compile: torch.compile the decode step (default: on CUDA).
    cuda_graphs: pad decode shapes to buckets and replay each bucket's step as a CUDA graph
        that the engine captures itself (default: on CUDA).
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer=None,
        *,
        max_batch_size: int = 8,
        max_seq_len: int | None = None,
        max_prefill_tokens: int = 2048,
        prefix_caching: bool = True,
        compile: bool | None = None,
        cuda_graphs: bool | None = None,
        stop_token_ids: Sequence[int] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.device = model.tok_embeddings.weight.device
        self.max_batch_size = max_batch_size
        self.max_seq_len = min(max_seq_len or 4096, self.config.max_seq_len)
        self.max_prefill_tokens = max_prefill_tokens
        self.prefix_caching = prefix_caching
        if stop_token_ids is None:
            stop_token_ids = getattr(tokenizer, "stop_tokens", ())
        self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
        on_cuda = self.device.type == "cuda"
        self.compile = on_cuda if compile is None else compile
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not on_cuda:
            raise ValueError(f"cuda_graphs needs a model on a CUDA device, not {self.device}")
        dtype = model.tok_embeddings.weight.dtype
        self.cache = SlotCache(self.config, max_batch_size, self.max_seq_len, dtype, self.device)
        self._decode_forward = self._build_decode_forward()

        self._ids = itertools.count()
        self._lock = threading.Condition()
        self._waiting: collections.deque[_Request] = collections.deque()
        self._running: list[_Request] = []  # request i holds cache row i
        self._closed = False
        self._thread: threading.Thread | None = None
        self._counts = collections.Counter()

    # ------------------------------------------------------------------ public API

    def submit(self, prompt: Prompt, params: SamplingParams | None = None,
               on_event: Callable[[TokenEvent], None] | None = None) -> RequestHandle:
        """Queue one request; returns at once. `on_event` runs on the engine thread: keep it short."""
        params = params or SamplingParams()
        prompt_ids = self.encode_prompt(prompt)
        if not prompt_ids:
            raise ValueError("the prompt is empty; generation needs at least one token (e.g. <|begin_of_text|>)")
        if len(prompt_ids) >= self.max_seq_len:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; this engine holds {self.max_seq_len} "
                             "positions per request, prompt and output together")
        bad = next((t for t in prompt_ids if not 0 <= t < self.config.vocab_size), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{self.config.vocab_size - 1})")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer; give the engine one or use stop_token_ids")
        stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self.stop_token_ids)
        max_tokens = min(params.max_tokens, self.max_seq_len - len(prompt_ids))
        sampler = SamplerRow.create(params, prompt_ids, self.config.vocab_size, self.device)
        with self._lock:
            if self._closed:
                raise EngineError("the engine is closed")
            handle = RequestHandle(next(self._ids), self)
            self._waiting.append(_Request(handle, prompt_ids, params, max_tokens, stop_ids, sampler, on_event))
            self._counts["requests_submitted"] += 1
            self._ensure_thread()
            self._lock.notify()
        return handle

    def generate(self, prompts: Sequence[Prompt] | Prompt, params: SamplingParams | Sequence[SamplingParams] | None = None,
                 progress: bool = False) -> list[GenerationResult]:
        """Generate for many prompts at once (continuously batched); results in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params_list = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(params_list)} sampling params for {len(prompts)} prompts")
        handles = [self.submit(p, sp) for p, sp in zip(prompts, params_list)]
        if progress:
            from tqdm import tqdm

            return [h.result() for h in tqdm(handles, desc="generate", unit="prompt")]
        return [h.result() for h in handles]

    async def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> AsyncIterator[TokenEvent]:
        """Events of one request on the running event loop. Leaving the loop early (a client that
        disconnected, a cancelled task) cancels the request and frees its cache row."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        handle = self.submit(prompt, params, on_event=lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        try:
            while True:
                event = await events.get()
                yield event
                if event.finished:
                    return
        finally:
            if not handle.done:
                handle.cancel()

    def stats(self) -> EngineStats:
        with self._lock:
            c = self._counts
            return EngineStats(
                waiting=len(self._waiting), running=len(self._running), max_batch_size=self.max_batch_size,
                requests_submitted=c["requests_submitted"], requests_finished=c["requests_finished"],
                requests_aborted=c["requests_aborted"], prompt_tokens=c["prompt_tokens"],
                prefix_cached_tokens=c["prefix_cached_tokens"], generation_tokens=c["generation_tokens"],
                decode_steps=c["decode_steps"],
            )

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids as given, or a string encoded with the tokenizer (BOS first where the tokenizer adds one)."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("string prompts need a tokenizer; pass token ids or give the engine one")
            return list(self.tokenizer.encode(prompt, bos=getattr(self.tokenizer, "add_bos", True)))
        return [int(t) for t in prompt]

    def close(self) -> None:
        """Abort everything queued or running and stop the engine thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the loop

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="pasture-engine", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._lock:
                    while not (self._closed or self._waiting or self._running):
                        self._lock.wait()
                    if self._closed:
                        break
                try:
                    self._iteration()
                except Exception as exc:  # fail the requests in flight; the engine keeps serving
                    logging.getLogger(__name__).exception("engine step failed")
                    self._fail_all(f"{type(exc).__name__}: {exc}")
            self._fail_all("the engine was closed", reason="abort")

    def _iteration(self) -> None:
        for row in reversed(range(len(self._running))):
            if self._running[row].handle.cancelled:
                self._finish(row, "abort")
        with self._lock:  # cancelled while queued: leave the queue now, not when a row frees up
            cancelled = [r for r in self._waiting if r.handle.cancelled]
            self._waiting = collections.deque(r for r in self._waiting if not r.handle.cancelled)
        for request in cancelled:
            self._emit(request, [], None, finish_reason="abort")
        self._admit()
        if self._running:
            self._decode()

    def _admit(self) -> None:
        budget = self.max_prefill_tokens
        while len(self._running) < self.max_batch_size and budget > 0:
            group = self._place_next_group(budget)
            if not group:
                return
            budget -= self._prefill(group)

    def _place_next_group(self, budget: int) -> list[_Request]:
        """Put the queue's next requests in the next free rows, each with its longest cached prefix, and
        return the ones to prefill together: as many as fit `budget` padded tokens (at least one). A
        request that shares a long prefix with one already in the group waits for the next group, to
        copy that prefix instead of computing it again. Requests stay queued until their prefill is
        done, so stats() never shows them nowhere."""
        with self._lock:
            candidates = list(itertools.islice(self._waiting, self.max_batch_size - len(self._running)))
        cache = self.cache
        group: list[_Request] = []
        longest_new = 0
        for request in candidates:
            row = len(self._running) + len(group)
            source, cached = (-1, 0)
            if self.prefix_caching:
                source, cached = cache.longest_prefix(request.prompt, range(cache.slots))
            new = len(request.prompt) - cached
            if group:
                shared = max(common_prefix_length(member.prompt, request.prompt[:-1]) for member in group)
                if (len(group) + 1) * max(longest_new, new) > budget or shared - cached >= PREFIX_WORTH_WAITING:
                    break
            if source >= row:  # a free row: move it here
                cache.swap(source, row)
            elif source >= 0:  # a running row or an earlier one of this group: copy its prefix
                cache.copy_prefix(source, row, cached)
            cache.tokens[row] = request.prompt[:cached]
            request.cached_tokens = cached
            group.append(request)
            longest_new = max(longest_new, new)
        return group

    def _prefill(self, group: list[_Request]) -> int:
        """Run the uncached prompt tokens of `group` (in the next rows) as one padded batch and sample each
        request's first token from its last prompt position; returns the tokens run, padding included."""
        first_row, n = len(self._running), len(group)
        starts = torch.tensor([r.cached_tokens for r in group], device=self.device)
        lengths = torch.tensor([len(r.prompt) - r.cached_tokens for r in group], device=self.device)
        width = int(lengths.max())
        tokens = torch.tensor([r.prompt[r.cached_tokens:] + [0] * (width - len(r.prompt) + r.cached_tokens)
                               for r in group], device=self.device)
        key_len = max(len(r.prompt) for r in group)
        positions, mask = step_inputs(starts, width, key_len, lengths, pad_position=self.cache.max_len)
        hidden = self.model(tokens, cache=StepCache(self.cache, first_row, starts, key_len, positions),
                            positions=positions, mask=mask, return_hidden=True)
        logits = self.model.output(hidden[torch.arange(n, device=self.device), lengths - 1]).float()  # last only
        for row, request in enumerate(group, start=first_row):
            self.cache.tokens[row] = list(request.prompt)
        with self._lock:
            for request in group:
                self._waiting.popleft()
                self._running.append(request)
                self._counts["prompt_tokens"] += len(request.prompt)
                self._counts["prefix_cached_tokens"] += request.cached_tokens
        self._sample_and_emit(logits, group)
        return n * width

    def _decode(self) -> None:
        running = self._running
        n = len(running)
        lengths = [len(self.cache.tokens[row]) for row in range(n)]
        tokens = [r.next_token for r in running]
        key_len = max(lengths) + 1
        logits = self._decode_forward(tokens, lengths, key_len)
        for row, request in enumerate(running):
            self.cache.tokens[row].append(request.next_token)
        with self._lock:
            self._counts["decode_steps"] += 1
        self._sample_and_emit(logits, list(running))

    def _build_decode_forward(self) -> Callable[[list[int], list[int], int], torch.Tensor]:
        """Last-position logits [n, vocab] for one new token per running row."""
        model, cache, device = self.model, self.cache, self.device

        def forward(tokens: torch.Tensor, starts: torch.Tensor, key_len: int) -> torch.Tensor:
            positions, mask = step_inputs(starts, 1, key_len)
            return model(tokens, cache=StepCache(cache, 0, starts, key_len), positions=positions, mask=mask)[:, -1]

        # On CPU the step's kernels are called from C++, not Python: 2-7% faster steps (benchmarks/RESULTS.md)
        # for a longer first compile; on CUDA the graph replay already skips the wrapper.
        step = torch.compile(forward, options={"cpp_wrapper": device.type == "cpu"}) if self.compile else forward
        if self.cuda_graphs:
            step = GraphedDecodeStep(step)
            if self.compile:  # each row bucket compiles with static rows, then once more when key_len turns dynamic
                row_buckets = cache.slots.bit_length() + 1
                torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * row_buckets + 2)

        def run(tokens: list[int], lengths: list[int], key_len: int) -> torch.Tensor:
            n = len(tokens)
            if self.cuda_graphs:  # fixed shapes: rows to a power of two, keys to a multiple of 256
                rows = min(1 << (n - 1).bit_length(), cache.slots)
                key_len = min(-(-key_len // 256) * 256, cache.max_len)
                tokens = tokens + [0] * (rows - n)
                lengths = lengths + [cache.max_len] * (rows - n)  # pads write the spare last position
            tokens_t = torch.tensor(tokens, device=device)[:, None]
            starts = torch.tensor(lengths, device=device)
            return step(tokens_t, starts, key_len)[:n]

        return run

    # ------------------------------------------------------------------ sampling and streaming

    def _sample_and_emit(self, logits: torch.Tensor, requests: list[_Request]) -> None:
        token_ids, logprobs = sample(logits.float(), [r.sampler for r in requests])
        now = time.perf_counter()
        with self._lock:
            self._counts["generation_tokens"] += len(requests)
        finished = []
        for request, token, logprob in zip(requests, token_ids.tolist(), logprobs):
            if not request.first_token_at:
                request.first_token_at = now
            if token in request.stop_ids:
                finished.append((request, "stop", token, [], None))
                continue
            request.output.append(token)
            request.sampler.record(token)
            if logprob is not None:
                request.logprobs.append(logprob)
            request.next_token = token
            reason, stop = self._check_stop_string(request)
            if reason is None and len(request.output) >= request.max_tokens:
                reason = "length"
            if reason is None:
                self._emit(request, [token], logprob)
            else:
                finished.append((request, reason, stop, [token], logprob))
        for request, reason, stop, new, logprob in finished:
            row = self._running.index(request)
            self._finish(row, reason, stop, new, logprob)

    def _check_stop_string(self, request: _Request) -> tuple[str | None, str | None]:
        if self.tokenizer is None:
            return None, None
        self._detokenize(request)
        stops = request.params.stop
        if not stops:
            return None, None
        # only a stop string that ends in the newest text can be new
        window_start = max(0, request.sent - max(len(s) for s in stops))
        found = [(request.text.find(s, window_start), s) for s in stops]
        found = [(i, s) for i, s in found if i >= 0]
        if not found:
            return None, None
        index, stop = min(found)
        request.text = request.text[:index + (len(stop) if request.params.include_stop_str_in_output else 0)]
        return "stop", stop

    def _detokenize(self, request: _Request, flush: bool = False) -> None:
        """Extend `request.text` with its newest tokens' text, once they end a character (or at once with
        `flush`, when the request ends). Only a short window is decoded, the new tokens after the ones
        before them (a token's text can depend on its neighbour's, e.g. SentencePiece's leading space),
        so a step costs the same at the thousandth token as at the tenth: decoding all of a 256-token
        output takes ~160 us, per row and step."""
        output, start, done = request.output, request.text_window, request.text_tokens
        before = self.tokenizer.decode(output[start:done])
        after = self.tokenizer.decode(output[start:])
        if flush or (len(after) > len(before) and not after.endswith("\ufffd")):
            request.text += after[len(before):]
            request.text_window, request.text_tokens = done, len(output)

    def _finish(self, row: int, reason: str, stop: int | str | None = None, new: list[int] | None = None,
                logprob: TokenLogprob | None = None) -> None:
        """Emit the last event and free the row (the last running row moves into it)."""
        request = self._running[row]
        if self.tokenizer is not None and not isinstance(stop, str):  # a stop string has cut the text already
            self._detokenize(request, flush=True)
        last = len(self._running) - 1
        self.cache.swap(row, last)
        self._running[row] = self._running[last]
        self._running.pop()
        self._emit(request, new or [], logprob, finish_reason=reason, stop_reason=stop)

    def _fail_all(self, message: str, reason: str = "error") -> None:
        with self._lock:
            pending = self._running + list(self._waiting)
            self._running, self._waiting = [], collections.deque()
        self.cache.tokens = [[] for _ in range(self.cache.slots)]  # a failed step may have left rows half written
        for request in pending:
            self._emit(request, [], None, finish_reason=reason, error=message)

    def _emit(self, request: _Request, new: list[int], logprob: TokenLogprob | None, finish_reason: str | None = None,
              stop_reason: int | str | None = None, error: str | None = None) -> None:
        end = len(request.text) if finish_reason else self._safe_text_end(request)
        text, request.sent = request.text[request.sent:end], max(request.sent, end)
        event = TokenEvent(request.handle.request_id, new, text, [logprob] if logprob else None,
                           finished=finish_reason is not None, finish_reason=finish_reason)
        if finish_reason is not None:
            now = time.perf_counter()
            event.result = GenerationResult(
                request.handle.request_id, request.prompt, request.output, request.text, finish_reason, stop_reason,
                request.logprobs, request.cached_tokens, error,
                latency_s=now - request.submitted,
                time_to_first_token_s=(request.first_token_at or now) - request.submitted,
            )
            with self._lock:
                self._counts["requests_aborted" if finish_reason == "abort" else "requests_finished"] += 1
        request.handle._publish(event)
        if request.on_event is not None:
            try:
                request.on_event(event)
            except Exception:  # a listener that fails (its event loop closed) loses only its own request
                request.handle.cancelled = True

    @staticmethod
    def _safe_text_end(request: _Request) -> int:
        """End of the text that can be streamed now: no trailing partial character or stop-string start."""
        text = request.text
        end = len(text)
        while end > request.sent and text[end - 1] == "\ufffd":
            end -= 1
        for stop in request.params.stop:
            for k in range(min(len(stop) - 1, end), 0, -1):
                if text[end - k:end] == stop[:k]:
                    end -= k
                    break
        return max(end, request.sent)

"""An OpenAI-compatible HTTP server over the engine, and the web chat page at `/`.

Endpoints: `/v1/models`, `/v1/completions`, `/v1/chat/completions` (streamed as
server-sent events ending with `data: [DONE]` when `stream` is set), `/health`,
`/metrics` (Prometheus text). Every bad request gets a 4xx with OpenAI's error JSON
before it reaches the engine; a request beyond the concurrency and queue limits gets
a 429; each request has a timeout; a client that goes away mid-stream cancels its
request, which frees its cache row before the next decode step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.staticfiles import StaticFiles

from pasture.serve.engine import Engine, GenerationResult, TokenEvent
from pasture.serve.metrics import ServerMetrics
from pasture.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingRequest,
    error_body,
)
from pasture.serve.sampling import SamplingParams, TokenLogprob
from pasture.serve.tool_calls import parse_reply

CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"  # also the metrics' endpoint labels
ChatEncoder = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], list[int]]


@dataclass
class ServerLimits:
    """What one server accepts: the engine's rows run at once, `max_queue` more may wait."""

    max_queue: int = 64
    request_timeout_s: float = 600.0
    max_body_bytes: int = 1 << 20


class ApiError(Exception):
    """A request refused with an HTTP status and OpenAI's error JSON."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, error_body(message, kind, param, code)


class BodyLimit(BaseHTTPMiddleware):
    """Refuses bodies above the limit from Content-Length, before reading them, and counts the refusal.

    Refusals on paths the server does not route are counted under one `other` label, so that a
    client cannot grow the metrics with made-up paths.
    """

    def __init__(self, app, max_bytes: int, metrics: ServerMetrics) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def dispatch(self, request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return self.refuse(request, 413, f"request body is larger than {self.max_bytes} bytes")
        if length is None and request.method == "POST":
            return self.refuse(request, 411, "a Content-Length header is required")
        return await call_next(request)

    def refuse(self, request: Request, status: int, message: str) -> JSONResponse:
        path = request.url.path
        self.metrics.request_done(path if path in (CHAT_PATH, COMPLETIONS_PATH) else "other", status)
        return JSONResponse(error_body(message), status_code=status)


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


class OpenAIServer:
    """Turns API requests into engine requests and engine events into API responses."""

    def __init__(self, engine: Engine, model_name: str, encode_chat: ChatEncoder,
                 limits: ServerLimits, api_key: str | None = None) -> None:
        self.engine = engine
        self.model_name = model_name
        self.encode_chat = encode_chat
        self.limits = limits
        self.api_key = api_key
        self.active = 0
        self.created = int(time.time())
        self.metrics = ServerMetrics({
            "queue_depth": lambda: engine.stats().waiting,
            "running_requests": lambda: engine.stats().running,
            "active_requests": lambda: self.active,
        })
        self.python_tag_id = getattr(engine.tokenizer, "python_tag_id", None)

    # ----------------------------------------------------------------- checks

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {self.api_key}":
            raise ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                           "authentication_error", code="invalid_api_key")

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    def sampling(self, body: SamplingRequest, prompt_len: int, max_tokens: int | None,
                 logprobs: int | None) -> SamplingParams:
        room = self.engine.max_seq_len - prompt_len
        if room < 1:
            raise ApiError(400, f"the prompt has {prompt_len} tokens; the context holds {self.engine.max_seq_len}",
                           param="messages", code="context_length_exceeded")
        if max_tokens is not None and max_tokens > room:
            raise ApiError(400, f"max_tokens is {max_tokens}, but the prompt has {prompt_len} tokens and the "
                           f"context holds {self.engine.max_seq_len}: at most {room} can be generated",
                           param="max_tokens", code="context_length_exceeded")
        try:
            return SamplingParams(
                max_tokens=max_tokens or room, temperature=body.temperature, top_p=body.top_p,
                top_k=max(body.top_k, 0), min_p=body.min_p, repetition_penalty=body.repetition_penalty,
                frequency_penalty=body.frequency_penalty, presence_penalty=body.presence_penalty,
                seed=body.seed, stop=tuple(body.stop_strings()), logprobs=logprobs,
            )
        except ValueError as e:
            raise ApiError(400, str(e)) from None

    def admit(self) -> None:
        if self.active >= self.engine.max_batch_size + self.limits.max_queue:
            raise ApiError(429, f"the server is busy ({self.active} requests in flight); retry later",
                           "rate_limit_error", code="too_many_requests")

    # ----------------------------------------------------------------- generation

    async def events(self, prompt: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        """The engine's events for one request, under the request timeout; counted while in flight."""
        self.active += 1
        stream = self.engine.stream(prompt, params)
        deadline = time.monotonic() + self.limits.request_timeout_s
        try:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    event = await asyncio.wait_for(anext(stream), timeout=max(remaining, 0.001))
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    raise ApiError(504, f"the request took longer than {self.limits.request_timeout_s:g} s",
                                   "timeout_error", code="timeout") from None
                yield event
                if event.finished:
                    if event.finish_reason == "error":
                        raise ApiError(500, f"generation failed: {event.result.error}", "server_error")
                    return
        finally:
            await stream.aclose()
            self.active -= 1

    async def run(self, prompt: list[int], params: SamplingParams) -> GenerationResult:
        async for event in self.events(prompt, params):
            if event.finished:
                return event.result
        raise ApiError(500, "the engine ended the request without a result", "server_error")

    def record(self, endpoint: str, result: GenerationResult) -> None:
        self.metrics.request_done(endpoint, 200)
        self.metrics.tokens(result.prompt_tokens, result.completion_tokens)
        self.metrics.timing(result.latency_s, result.time_to_first_token_s if result.token_ids else None)

    @staticmethod
    def usage(result: GenerationResult) -> dict[str, int]:
        return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "total_tokens": result.prompt_tokens + result.completion_tokens}

    @staticmethod
    def finish_reason(result: GenerationResult) -> str:
        return "length" if result.finish_reason == "length" else "stop"

    # ----------------------------------------------------------------- logprobs

    def _token_text(self, token_id: int) -> str:
        return self.engine.tokenizer.decode([token_id])

    def chat_logprobs(self, logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
        if logprobs is None:
            return None
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            text = self._token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
        return {"content": [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}
                            for lp in logprobs]}

    def completion_logprobs(self, logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
        if logprobs is None:
            return None
        tokens = [self._token_text(lp.token_id) for lp in logprobs]
        offsets, offset = [], 0
        for text in tokens:
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in logprobs],
                "top_logprobs": [{self._token_text(t): v for t, v in lp.top} for lp in logprobs],
                "text_offset": offsets}

    # ----------------------------------------------------------------- endpoints

    def chat_prompt(self, body: ChatCompletionRequest) -> list[int]:
        messages = []
        for message in body.messages:
            entry: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role,
                                     "content": message.text()}
            if message.tool_calls:
                entry["tool_calls"] = [call.model_dump() for call in message.tool_calls]
            messages.append(entry)
        tools = None if body.tool_choice == "none" or not body.tools else [t.model_dump() for t in body.tools]
        try:
            return self.encode_chat(messages, tools)
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None

    async def chat(self, body: ChatCompletionRequest) -> Response:
        self.check_model(body.model)
        prompt = self.chat_prompt(body)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        params = self.sampling(body, len(prompt), body.token_limit(), logprobs)
        self.admit()
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return self.stream_response(self.chat_chunks(request_id, prompt, params, bool(body.tools),
                                                         include_usage))
        result = await self.run(prompt, params)
        self.record(CHAT_PATH, result)
        reply = parse_reply(self.reply_text(result), self.starts_with_python_tag(result)) if body.tools else None
        message: dict[str, Any] = {"role": "assistant", "content": result.text}
        finish = self.finish_reason(result)
        if reply is not None and reply.tool_calls:
            message = {"role": "assistant", "content": reply.content, "tool_calls": reply.tool_calls}
            finish = "tool_calls"
        choice = {"index": 0, "message": message, "finish_reason": finish,
                  "logprobs": self.chat_logprobs(result.logprobs)}
        return JSONResponse({"id": request_id, "object": "chat.completion", "created": int(time.time()),
                             "model": self.model_name, "choices": [choice], "usage": self.usage(result)})

    def starts_with_python_tag(self, result: GenerationResult) -> bool:
        return bool(result.token_ids) and result.token_ids[0] == self.python_tag_id

    def reply_text(self, result: GenerationResult) -> str:
        """The reply without a leading `<|python_tag|>`, which only marks a tool call."""
        if self.starts_with_python_tag(result):
            return self.engine.tokenizer.decode(result.token_ids[1:])
        return result.text

    async def chat_chunks(self, request_id: str, prompt: list[int], params: SamplingParams,
                          tools: bool, include_usage: bool) -> AsyncIterator[bytes]:
        """Chat chunks: the role (with the first token), content deltas, then the finish reason (and usage).

        With tools, content that may be a tool call (it starts with the python tag, `{`
        or a call tag) is held back until the reply ends, then sent as `tool_calls`.
        """
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, logprobs=None) -> bytes:
            return _sse({"id": request_id, "object": "chat.completion.chunk", "created": created,
                         "model": self.model_name,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]})

        undecided = tools  # with tools, the reply's first words decide whether it is a call
        held = ""  # text kept back while undecided, or the whole call once decided
        holding = False
        role_sent = False
        async for event in self.events(prompt, params):
            if not role_sent:  # sent with the first token, so a client that saw it has a running request
                role_sent = True
                yield chunk({"role": "assistant", "content": ""})
            text = event.text
            if undecided and not holding:
                held += text
                if held.strip() or (event.token_ids and event.token_ids[0] == self.python_tag_id):
                    undecided = False
                    holding = self._may_be_call(event, held)
                    if not holding:
                        yield chunk({"content": held}, logprobs=self.chat_logprobs(event.logprobs))
                        held = ""
            elif holding:
                held += text
            elif text:
                yield chunk({"content": text}, logprobs=self.chat_logprobs(event.logprobs))
            if event.finished:
                result = event.result
                finish = self.finish_reason(result)
                if holding or held:
                    reply = parse_reply(self.reply_text(result), self.starts_with_python_tag(result))
                    if reply.tool_calls:
                        calls = [{"index": i, **call} for i, call in enumerate(reply.tool_calls)]
                        yield chunk({"tool_calls": calls})
                        finish = "tool_calls"
                    else:
                        yield chunk({"content": held})
                self.record(CHAT_PATH, result)
                yield chunk({}, finish)
                if include_usage:
                    yield _sse({"id": request_id, "object": "chat.completion.chunk", "created": created,
                                "model": self.model_name, "choices": [], "usage": self.usage(result)})
        yield _sse("[DONE]")

    def _may_be_call(self, event: TokenEvent, text: str) -> bool:
        if event.token_ids and event.token_ids[0] == self.python_tag_id:
            return True
        start = text.lstrip()
        return start.startswith(("{", "<function=", "<tool_call>", "<|python_tag|>"))

    def completion_prompt(self, body: CompletionRequest) -> list[int]:
        prompt = body.prompt
        if isinstance(prompt, list) and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return list(self.engine.tokenizer.encode(prompt, bos=True))
        vocab = self.engine.config.vocab_size
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if bad is not None:
            raise ApiError(400, f"token id {bad} is outside the vocabulary (0..{vocab - 1})", param="prompt")
        return list(prompt)

    async def complete(self, body: CompletionRequest) -> Response:
        self.check_model(body.model)
        prompt = self.completion_prompt(body)
        params = self.sampling(body, len(prompt), body.token_limit(), body.logprobs)
        self.admit()
        request_id = f"cmpl-{uuid.uuid4().hex}"
        echo = self.engine.tokenizer.decode(prompt[1:] if prompt[0] == self.engine.tokenizer.bos_id else prompt) \
            if body.echo else ""
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return self.stream_response(self.completion_chunks(request_id, prompt, params, echo, include_usage))
        result = await self.run(prompt, params)
        self.record(COMPLETIONS_PATH, result)
        choice = {"index": 0, "text": echo + result.text, "finish_reason": self.finish_reason(result),
                  "logprobs": self.completion_logprobs(result.logprobs)}
        return JSONResponse({"id": request_id, "object": "text_completion", "created": int(time.time()),
                             "model": self.model_name, "choices": [choice], "usage": self.usage(result)})

    async def completion_chunks(self, request_id: str, prompt: list[int], params: SamplingParams, echo: str,
                                include_usage: bool) -> AsyncIterator[bytes]:
        created = int(time.time())

        def chunk(text: str, finish: str | None = None, logprobs=None, **extra) -> bytes:
            return _sse({"id": request_id, "object": "text_completion", "created": created, "model": self.model_name,
                         "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}],
                         **extra})

        if echo:
            yield chunk(echo)
        async for event in self.events(prompt, params):
            if event.text or event.logprobs:
                yield chunk(event.text, logprobs=self.completion_logprobs(event.logprobs))
            if event.finished:
                self.record(COMPLETIONS_PATH, event.result)
                yield chunk("", self.finish_reason(event.result))
                if include_usage:
                    yield _sse({"id": request_id, "object": "text_completion", "created": created,
                                "model": self.model_name, "choices": [], "usage": self.usage(event.result)})
        yield _sse("[DONE]")

    def stream_response(self, chunks: AsyncIterator[bytes]) -> StreamingResponse:
        async def guarded() -> AsyncIterator[bytes]:
            try:
                async for part in chunks:
                    yield part
            except ApiError as e:  # after the headers went out, an error travels as an event
                yield _sse(e.body)
                yield _sse("[DONE]")
        return StreamingResponse(guarded(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def build_app(engine: Engine, model_name: str, encode_chat: ChatEncoder, limits: ServerLimits | None = None,
              api_key: str | None = None) -> FastAPI:
    """The FastAPI application; `pasture serve` runs it with uvicorn."""
    limits = limits or ServerLimits()
    server = OpenAIServer(engine, model_name, encode_chat, limits, api_key)
    app = FastAPI(title="pasture", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, metrics=server.metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        server.metrics.request_done(request.url.path, e.status)
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"msg": "invalid request", "loc": ()}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = "the body is not valid JSON" if first.get("type") == "json_invalid" else \
            f"{where or 'body'}: {first.get('msg', 'invalid value')}"
        server.metrics.request_done(request.url.path, 400)
        return JSONResponse(error_body(message, param=where or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(e.detail)), status_code=e.status_code)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.authorize(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": server.created,
                                            "owned_by": "pasture", "max_model_len": engine.max_seq_len}]}

    @app.post(CHAT_PATH)
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        server.authorize(request)
        return await server.chat(body)

    @app.post(COMPLETIONS_PATH)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        server.authorize(request)
        return await server.complete(body)

    static = resources.files("pasture.serve") / "static"

    @app.get("/")
    async def page() -> Response:
        return Response((static / "index.html").read_bytes(), media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app

"""The OpenAI-compatible server, driven by the official `openai` client over loopback.

The served model memorized a few replies (tests/memorized_model.py), so every answer,
tool call and token count is checked exactly.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest
import uvicorn

from memorized_model import (
    CAPITAL_QUESTION,
    CAPITAL_REPLY,
    COMPLETION_PROMPT,
    COMPLETION_TEXT,
    WEATHER_CALL,
    WEATHER_QUESTION,
    WEATHER_TOOL,
    tiny_model,
)
from pasture.serve.engine import Engine
from pasture.serve.server import ServerLimits, build_app
from pasture.serve.served import llama3_chat_encoder
from pasture.tokenizer.chat_format import ChatFormat

MODEL = "memorized"
API_KEY = "sk-test-key"


@pytest.fixture(scope="module")
def tokenizer(serve_tokenizer):
    return serve_tokenizer


@pytest.fixture(scope="module")
def model(memorized):
    return memorized


@pytest.fixture(scope="module")
def random_model(tokenizer):
    """Random weights rarely produce a stop token: long generations for limits and disconnects."""
    return tiny_model(tokenizer, seed=1)


LONG_QUESTION = [{"role": "user", "content": "Tell me everything."}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(model, tokenizer, max_batch_size: int = 4, api_key: str | None = None,
                **limits) -> Iterator[tuple[str, Engine]]:
    """A uvicorn server on 127.0.0.1 in a thread, stopped (and its engine closed) on exit."""
    engine = Engine(model, tokenizer, max_batch_size=max_batch_size, max_seq_len=1024)
    app = build_app(engine, MODEL, llama3_chat_encoder(ChatFormat(tokenizer)), ServerLimits(**limits), api_key)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", engine
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        engine.close()


@pytest.fixture(scope="module")
def served(model, tokenizer):
    with live_server(model, tokenizer) as (url, engine):
        yield url, engine


@pytest.fixture
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_and_health(client, served):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(served[0] + "/health").json() == {"status": "ok"}


def test_chat_reply_and_usage(client, tokenizer):
    response = client.chat.completions.create(model=MODEL, messages=CAPITAL_QUESTION, temperature=0)
    choice = response.choices[0]
    assert choice.message.content == CAPITAL_REPLY
    assert choice.finish_reason == "stop"
    prompt = llama3_chat_encoder(ChatFormat(tokenizer))(CAPITAL_QUESTION, None)
    assert response.usage.prompt_tokens == len(prompt)
    assert response.usage.completion_tokens == len(tokenizer.encode(CAPITAL_REPLY))  # the stop id is not counted
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_chat_stream_ends_with_done(client, served):
    stream = client.chat.completions.create(model=MODEL, messages=CAPITAL_QUESTION, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == CAPITAL_REPLY
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage.completion_tokens == len(CAPITAL_REPLY.encode())
    body = {"model": MODEL, "messages": CAPITAL_QUESTION, "temperature": 0, "stream": True}
    raw = httpx.post(served[0] + "/v1/chat/completions", json=body, timeout=60).text
    events = [line for line in raw.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_length_finish_reason(client):
    response = client.chat.completions.create(model=MODEL, messages=CAPITAL_QUESTION, temperature=0, max_tokens=7)
    assert response.choices[0].finish_reason == "length"
    assert response.choices[0].message.content == CAPITAL_REPLY[:7]  # one byte per token
    assert response.usage.completion_tokens == 7


def test_completions_plain_and_streamed(client):
    response = client.completions.create(model=MODEL, prompt=COMPLETION_PROMPT, max_tokens=200, temperature=0)
    assert response.choices[0].text == COMPLETION_TEXT
    assert response.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt=COMPLETION_PROMPT, max_tokens=200, temperature=0, stream=True) if c.choices)
    assert streamed == COMPLETION_TEXT
    echoed = client.completions.create(model=MODEL, prompt=COMPLETION_PROMPT, max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == COMPLETION_PROMPT + COMPLETION_TEXT[:5]


def test_completion_logprobs_match_the_engine(client, served, tokenizer):
    response = client.completions.create(model=MODEL, prompt=COMPLETION_PROMPT, max_tokens=6, temperature=0,
                                         logprobs=3)
    logprobs = response.choices[0].logprobs
    assert "".join(logprobs.tokens) == COMPLETION_TEXT[:6]
    from pasture.serve.sampling import SamplingParams

    direct = served[1].generate(COMPLETION_PROMPT, SamplingParams(temperature=0, max_tokens=6, logprobs=3))[0]
    assert logprobs.token_logprobs == pytest.approx([lp.logprob for lp in direct.logprobs], abs=1e-5)
    assert all(len(top) == 3 for top in logprobs.top_logprobs)


def test_tool_calls(client):
    response = client.chat.completions.create(model=MODEL, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL],
                                              temperature=0)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == json.loads(WEATHER_CALL)["parameters"]
    chunks = list(client.chat.completions.create(model=MODEL, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL],
                                                 temperature=0, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [("get_weather", {"city": "Paris"})]
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": "nope", "messages": CAPITAL_QUESTION}, 404, "does not exist"),
    ({"model": MODEL, "messages": CAPITAL_QUESTION, "max_tokens": "ten"}, 400, "max_tokens"),
    ({"model": MODEL, "messages": "hello"}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "user"}]}, 400, "content"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL, "messages": CAPITAL_QUESTION, "max_tokens": 5000}, 400, "context"),
    ({"model": MODEL, "messages": CAPITAL_QUESTION, "temperature": -0.5}, 400, "temperature"),
    ({"model": MODEL, "messages": CAPITAL_QUESTION, "top_p": 0}, 400, "top_p"),
    ({"messages": CAPITAL_QUESTION}, 400, "model"),
])
def test_bad_chat_requests_get_openai_errors(served, body, status, fragment):
    response = httpx.post(served[0] + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"]


def test_bad_bodies_and_the_server_keeps_serving(served, client):
    url = served[0] + "/v1/chat/completions"
    malformed = httpx.post(url, content=b'{"model": "memorized", "messages": [', timeout=30,
                           headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400 and "JSON" in malformed.json()["error"]["message"]
    oversized = httpx.post(url, content=b"x" * (2 << 20), timeout=30, headers={"Content-Type": "application/json"})
    assert oversized.status_code == 413 and oversized.json()["error"]["message"]
    bad_ids = httpx.post(served[0] + "/v1/completions", json={"model": MODEL, "prompt": [1, 10**9]}, timeout=30)
    assert bad_ids.status_code == 400 and "vocabulary" in bad_ids.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=CAPITAL_QUESTION, temperature=-1)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=CAPITAL_QUESTION)
    assert client.chat.completions.create(model=MODEL, messages=CAPITAL_QUESTION, temperature=0) \
        .choices[0].message.content == CAPITAL_REPLY


def test_api_key(model, tokenizer):
    with live_server(model, tokenizer, api_key=API_KEY) as (url, _):
        anonymous = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            anonymous.chat.completions.create(model=MODEL, messages=CAPITAL_QUESTION)
        with pytest.raises(openai.AuthenticationError):
            anonymous.models.list()
        keyed = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
        assert keyed.chat.completions.create(model=MODEL, messages=CAPITAL_QUESTION, temperature=0) \
            .choices[0].message.content == CAPITAL_REPLY
        assert httpx.get(url + "/health").status_code == 200


def _wait_idle(engine: Engine, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.stats().running or engine.stats().waiting:
        assert time.monotonic() < deadline, f"requests still in the engine: {engine.stats()}"
        time.sleep(0.01)


def _solo(engine: Engine, messages, tokenizer, max_tokens: int):
    """What the engine generates for this chat alone, greedy."""
    from pasture.serve.sampling import SamplingParams

    prompt = llama3_chat_encoder(ChatFormat(tokenizer))(messages, None)
    return engine.generate(prompt, SamplingParams(temperature=0, max_tokens=max_tokens))[0]


def test_disconnect_mid_stream_frees_the_slot(random_model, tokenizer):
    with live_server(random_model, tokenizer) as (url, engine):
        body = {"model": MODEL, "messages": LONG_QUESTION, "temperature": 0, "stream": True, "max_tokens": 900}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")  # the role chunk: the request is running
        _wait_idle(engine)
        stats = engine.stats()
        assert stats.requests_aborted == 1 and stats.generation_tokens < 900


def test_busy_server_answers_429_and_recovers(random_model, tokenizer):
    with live_server(random_model, tokenizer, max_batch_size=1, max_queue=0) as (url, engine):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        body = {"model": MODEL, "messages": LONG_QUESTION, "temperature": 0, "stream": True, "max_tokens": 200}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as first:
            lines = first.iter_lines()
            next(lines)
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model=MODEL, messages=CAPITAL_QUESTION)
            text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                           for line in lines if line.startswith("data: {"))
        _wait_idle(engine)
        assert text == _solo(engine, LONG_QUESTION, tokenizer, 200).text  # the busy answer did not disturb it
        assert client.chat.completions.create(model=MODEL, messages=LONG_QUESTION, temperature=0, max_tokens=5) \
            .choices[0].finish_reason in ("length", "stop")


def test_request_timeout(random_model, tokenizer):
    with live_server(random_model, tokenizer, request_timeout_s=0.001) as (url, engine):
        response = httpx.post(url + "/v1/chat/completions", timeout=30,
                              json={"model": MODEL, "messages": LONG_QUESTION, "temperature": 0, "max_tokens": 900})
        assert response.status_code == 504 and response.json()["error"]["type"] == "timeout_error"
        _wait_idle(engine)
        assert engine.stats().requests_aborted == 1


def test_metrics_count_requests_and_tokens(model, tokenizer):
    with live_server(model, tokenizer) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        usages = [client.chat.completions.create(model=MODEL, messages=CAPITAL_QUESTION, temperature=0).usage
                  for _ in range(2)]
        httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": []})
        httpx.post(url + "/v1/completions", content=b"x" * (2 << 20), headers={"Content-Type": "application/json"})
        httpx.post(url + "/made/up", content=b"x" * (2 << 20))
        text = httpx.get(url + "/metrics").text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert values['pasture_requests_total{endpoint="/v1/chat/completions",status="200"}'] == "2"
    assert values['pasture_requests_total{endpoint="/v1/chat/completions",status="400"}'] == "1"
    assert values['pasture_requests_total{endpoint="/v1/completions",status="413"}'] == "1"
    assert values['pasture_requests_total{endpoint="other",status="413"}'] == "1"
    assert int(values["pasture_generation_tokens_total"]) == sum(u.completion_tokens for u in usages)
    assert int(values["pasture_prompt_tokens_total"]) == sum(u.prompt_tokens for u in usages)
    assert values["pasture_request_latency_seconds_count"] == "2"
    assert values["pasture_queue_depth"] == "0"


def test_web_page_loads_nothing_from_outside(served):
    import re

    page = httpx.get(served[0] + "/").text
    assert '<script src="/static/chat.js">' in page
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(a.startswith("/static/") for a in assets)
    outside = re.compile(r"""(?:src|href)\s*=\s*["']?https?:|url\(\s*["']?https?:|fetch\(\s*["'`]https?:|import\s.*https?:""")
    for asset in ["/", *assets]:
        response = httpx.get(served[0] + asset)
        assert response.status_code == 200 and not outside.search(response.text), asset


def test_load_64_concurrent_streams_no_error_no_leak(random_model, tokenizer):
    """64 streaming chats at once on loopback, each its own question and seed: every reply is the
    one that chat gets alone, nothing fails, and the engine ends idle with every request finished."""
    from pasture.serve.load import run_load

    conversations = [[{"role": "user", "content": f"Question number {i}?"}] for i in range(64)]  # seeds 0..63
    with live_server(random_model, tokenizer, max_batch_size=8, max_queue=64) as (url, engine):
        report = run_load(url, MODEL, conversations, max_tokens=12, temperature=0.8, deadline_s=120)
        _wait_idle(engine)
        stats = engine.stats()
        solo = [httpx.post(url + "/v1/chat/completions", timeout=30, json={
            "model": MODEL, "messages": c, "max_tokens": 12, "temperature": 0.8, "seed": i,
        }).json()["choices"][0]["message"]["content"] for i, c in enumerate(conversations)]
    summary = report.summary()
    assert report.errors == [] and summary["errors"] == 0 and summary["clients"] == 64
    assert report.replies == solo  # no request saw another's text, batched or not
    assert stats.requests_finished == 64 and stats.requests_aborted == 0 and stats.running == 0
    # the engine also counts each stop token it sampled; usage does not
    assert summary["completion_tokens"] <= stats.generation_tokens <= summary["completion_tokens"] + 64
    assert summary["tokens_per_s"] > 0 and 0 < summary["latency_p50_s"] <= summary["latency_p99_s"] <= summary["seconds"]
    assert summary["first_token_p50_s"] <= summary["latency_p50_s"]

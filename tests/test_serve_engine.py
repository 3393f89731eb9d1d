"""The serving engine against the model's own forward: cache, batching, sampling, stops, log-probs."""

import asyncio
import dataclasses
import threading

import pytest
import torch

from pasture import model as pm
from pasture.cli import main
from pasture.model.config import ModelConfig, RopeScaling
from pasture.model.llama import KVCache
from pasture.serve import Engine, SamplingParams
from pasture.serve.sampling import SamplerRow, sample
from pasture.tokenizer import Tokenizer

GREEDY = SamplingParams(temperature=0, max_tokens=16)


def small_config(**kw) -> ModelConfig:
    """GQA and Llama 3.1 RoPE scaling that bites at these lengths."""
    base = dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=320, multiple_of=32,
                ffn_dim_multiplier=1.3, rope_scaling=RopeScaling(original_max_position_embeddings=64),
                max_seq_len=256)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def model():
    return pm.build(small_config(), seed=11).eval()


@pytest.fixture(scope="module")
def llama3_tokenizer():
    return Tokenizer.load("llama3")


@pytest.fixture(scope="module")
def word_model(llama3_tokenizer):
    return pm.build(small_config(vocab_size=llama3_tokenizer.vocab_size), seed=12).eval()


def forward_greedy(model, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens from full forwards without a cache, and each step's log-softmax."""
    ids, log_probs = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            last = model(torch.tensor([ids]))[0, -1]
            log_probs.append(torch.log_softmax(last, -1))
            ids.append(int(last.argmax()))
    return ids[len(prompt):], log_probs


def kv_cache_greedy(model, prompt: list[int], n: int, stop: set[int] = frozenset()) -> list[int]:
    """The KV-cache greedy loop `pasture generate` ran before the engine (model.KVCache, one row)."""
    cache = KVCache(model.config, 1, len(prompt) + n, torch.float32, "cpu")
    out, step = [], torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            token = model(step, cache=cache)[:, -1].argmax(-1)
            if int(token) in stop:
                break
            out.append(int(token))
            step = token.view(1, 1)
    return out


def prompts_of(lengths, seed=0, vocab=320):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def test_kv_cache_and_log_probs_equal_forward_without_cache(model):
    prompts = prompts_of([1, 7, 30])
    with Engine(model, max_batch_size=3) as engine:
        results = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=12, logprobs=3))
    for prompt, result in zip(prompts, results):
        tokens, log_probs = forward_greedy(model, prompt, 12)
        assert result.token_ids == tokens and result.finish_reason == "length"
        for got, expected, token in zip(result.logprobs, log_probs, tokens):
            assert got.token_id == token
            assert got.logprob == pytest.approx(expected[token].item(), abs=1e-4)
            top = expected.topk(3)
            assert [t for t, _ in got.top] == top.indices.tolist()
            assert [lp for _, lp in got.top] == pytest.approx(top.values.tolist(), abs=1e-4)


MIXED = [
    SamplingParams(temperature=0, max_tokens=9),
    SamplingParams(temperature=0.9, top_p=0.8, seed=1, max_tokens=17),
    SamplingParams(temperature=1.2, top_k=20, min_p=0.02, seed=2, max_tokens=5),
    SamplingParams(temperature=0.7, repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.4, seed=3,
                   max_tokens=13),
    SamplingParams(temperature=0, repetition_penalty=1.5, max_tokens=11),
    SamplingParams(temperature=1.0, top_p=1.0, seed=4, max_tokens=20),
]


def test_continuous_batching_gives_each_request_its_solo_tokens(model):
    prompts = prompts_of([3, 25, 8, 14, 1, 19], seed=1)
    with Engine(model, max_batch_size=1) as engine:
        solo = [engine.generate([p], sp)[0].token_ids for p, sp in zip(prompts, MIXED)]
    # three rows for six requests: they queue, join as rows free up, leave at different steps
    with Engine(model, max_batch_size=3) as engine:
        first = engine.submit(prompts[0], MIXED[0])
        next(iter(first))  # the first request is decoding before the others arrive
        handles = [first] + [engine.submit(p, sp) for p, sp in zip(prompts[1:], MIXED[1:])]
        batched = [h.result().token_ids for h in handles]
        stats = engine.stats()
    assert batched == solo
    assert [len(t) for t in solo] == [sp.max_tokens for sp in MIXED]
    assert stats.requests_finished == 6 and stats.generation_tokens == sum(sp.max_tokens for sp in MIXED)
    assert stats.decode_steps < sum(sp.max_tokens for sp in MIXED) - 6  # rows really shared decode steps


def test_prompts_prefilled_together_are_padded_and_give_their_solo_numbers(model):
    prompts = prompts_of([3, 25, 8, 1], seed=6)
    params = SamplingParams(temperature=0, max_tokens=6, logprobs=2)

    def run(**engine_args) -> tuple[list, list[tuple[int, int]]]:
        shapes = []
        hook = model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
        try:
            with Engine(model, max_batch_size=4, **engine_args) as engine:
                with engine._lock:  # all four are queued before the engine thread's first iteration
                    handles = [engine.submit(p, params) for p in prompts]
                return [h.result() for h in handles], shapes
        finally:
            hook.remove()

    together, shapes = run()
    assert shapes == [(4, 25)] + [(4, 1)] * 5  # one prefill padded to the longest prompt, then decode steps
    for prompt, result in zip(prompts, together):
        tokens, log_probs = forward_greedy(model, prompt, 6)
        assert result.token_ids == tokens
        assert [lp.logprob for lp in result.logprobs] == pytest.approx(
            [step[t].item() for step, t in zip(log_probs, tokens)], abs=1e-4)
    # 50 padded tokens an iteration: 2 x 25 first, then a decode step, then the other two (2 x 8)
    split, shapes = run(max_prefill_tokens=50)
    assert shapes[:4] == [(2, 25), (2, 1), (2, 8), (4, 1)]
    assert [r.token_ids for r in split] == [r.token_ids for r in together]


def test_engine_equals_previous_kv_cache_generation_and_cli(word_model, llama3_tokenizer, tmp_path, capsys):
    tok = llama3_tokenizer
    prompt = tok.encode("The herd grazes on", bos=True)
    expected = kv_cache_greedy(word_model, prompt, 20, set(tok.stop_tokens))
    with Engine(word_model, tok) as engine:
        assert engine.generate(prompt, SamplingParams(temperature=0, max_tokens=20))[0].token_ids == expected
    pm.save(word_model, tmp_path / "model")
    args = ["generate", str(tmp_path / "model"), "--tokenizer", "llama3", "--prompt", "The herd grazes on",
            "--max-tokens", "20", "--temperature", "0"]
    assert main(args) == 0
    assert capsys.readouterr().out == "The herd grazes on" + tok.decode(expected) + "\n"


def test_stop_ids_and_stop_strings(word_model, llama3_tokenizer):
    tok = llama3_tokenizer
    prompt = tok.encode("A stream of words", bos=True)
    free = kv_cache_greedy(word_model, prompt, 24)
    with Engine(word_model, tok) as engine:
        stopped = engine.generate(prompt, SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[free[5]]))[0]
        assert stopped.token_ids == free[:free.index(free[5])] and stopped.finish_reason == "stop"
        assert stopped.stop_reason == free[5]

        text = tok.decode(free)
        stop = text[len(tok.decode(free[:6])) - 2:len(tok.decode(free[:8]))]  # spans token boundaries
        handle = engine.submit(prompt, SamplingParams(temperature=0, max_tokens=24, stop=[stop]))
        streamed = "".join(event.text for event in handle)
        result = handle.result()
        assert result.text == text[:text.index(stop)] == streamed
        assert result.finish_reason == "stop" and result.stop_reason == stop
        kept = engine.generate(prompt, SamplingParams(temperature=0, max_tokens=24, stop=[stop],
                                                      include_stop_str_in_output=True))[0]
        assert kept.text == text[:text.index(stop) + len(stop)]
        # the tokenizer's stop ids end every request unless told otherwise
        assert engine.stop_token_ids == set(tok.stop_tokens)


class DecodeSpy:
    """A tokenizer that records how many ids each decode call gets."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths = tokenizer, []

    def decode(self, ids):
        self.lengths.append(len(ids))
        return self.tokenizer.decode(ids)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_streamed_text_is_decoded_incrementally_and_equals_the_whole_decode(word_model, llama3_tokenizer):
    """Near-uniform sampling over Llama 3's vocabulary emits tokens that end mid-character; the text still
    streams whole characters only, and each step decodes a few tokens, not the whole output."""
    spy = DecodeSpy(llama3_tokenizer)
    prompt = llama3_tokenizer.encode("Bytes:", bos=True)
    with Engine(word_model, spy, max_seq_len=256) as engine:
        handle = engine.submit(prompt, SamplingParams(temperature=20.0, top_p=1.0, max_tokens=200, seed=3,
                                                      ignore_eos=True))
        events = list(handle)
    result = handle.result()
    partial = [t for t in result.token_ids if "\ufffd" in llama3_tokenizer.decode([t])]
    assert len(result.token_ids) == 200 and len(partial) >= 2  # the case this test is about occurs
    assert "".join(e.text for e in events) == result.text == llama3_tokenizer.decode(result.token_ids)
    assert not any(e.text.endswith("\ufffd") for e in events[:-1])  # no character is streamed half
    assert max(spy.lengths) <= 8 and len(spy.lengths) <= 2 * 200 + 2


def test_compiled_decode_writes_the_cache_in_place_and_equals_eager(model):
    """A compiled decode step writes each row's new keys and values in place. Session 7 found
    inductor copying the whole cache every step (0.4 ms of a 2.1 ms step on an H200) when the step
    wrote through a view of one big tensor: no generated loop may span a whole cache layer."""
    from torch._inductor.utils import run_and_get_code

    prompts = prompts_of([9, 4, 6], seed=7)
    eager = [r.token_ids for r in Engine(model, max_batch_size=3).generate(prompts, GREEDY)]
    with Engine(model, max_batch_size=3, max_seq_len=97, compile=True) as engine:
        with torch.inference_mode():  # the step's first call compiles it (rows 0-2 hold no tokens yet)
            _, code = run_and_get_code(lambda: engine._decode_forward([1, 2, 3], [5, 7, 9], 10))
        assert [r.token_ids for r in engine.generate(prompts, GREEDY)] == eager
        layer_numel = engine.cache.k[0].numel()  # 3 rows x 2 heads x 98 positions x 8 dims: no other tensor's size
    assert layer_numel == 4704 and code
    assert f"{layer_numel}L" not in "\n".join(code)


def test_prefix_cache_reuse_gives_identical_outputs(model):
    system = prompts_of([40], seed=2)[0]
    prompts = [system + tail for tail in prompts_of([5, 9, 2, 5], seed=3)]
    prompts[3] = prompts[0][:-2] + prompts[3][-2:]  # shares all but two tokens with the first
    sampled = SamplingParams(temperature=0.8, seed=5, max_tokens=10)
    with Engine(model, max_batch_size=2, prefix_caching=False) as engine:
        plain = engine.generate(prompts, sampled)
    with Engine(model, max_batch_size=2) as engine:
        cached = engine.generate(prompts, sampled)
        again = engine.generate(prompts[3], sampled)[0]  # from a free row that still holds it
    assert [r.token_ids for r in cached] == [r.token_ids for r in plain]
    assert plain[0].cached_tokens == 0 and cached[0].cached_tokens == 0
    assert [r.cached_tokens for r in cached[1:]] == [40, 40, len(prompts[0]) - 2]
    assert again.token_ids == plain[3].token_ids and again.cached_tokens == len(prompts[3]) - 1


def test_async_stream_disconnect_frees_the_row(model):
    prompt = prompts_of([4], seed=4)[0]
    with Engine(model, max_batch_size=1) as engine:
        async def client():
            seen = 0
            async for event in engine.stream(prompt, SamplingParams(temperature=0, max_tokens=200)):
                seen += len(event.token_ids)
                if seen == 3:
                    break  # the client goes away mid-stream
            return seen

        async def both():
            assert await client() == 3
            return [e async for e in engine.stream(prompt, GREEDY)]

        events = asyncio.run(both())
        stats = engine.stats()
    assert events[-1].finished and events[-1].result.token_ids == forward_greedy(model, prompt, 16)[0]
    assert sum(len(e.token_ids) for e in events) == 16
    assert stats.requests_aborted == 1 and stats.requests_finished == 1 and stats.running == stats.waiting == 0


def test_cancelling_a_queued_request_ends_it_before_a_row_frees(model):
    prompt = prompts_of([4], seed=5)[0]
    with Engine(model, max_batch_size=1) as engine:
        running = engine.submit(prompt, SamplingParams(temperature=0, max_tokens=200))
        next(iter(running))
        queued = engine.submit(prompt, GREEDY)
        queued.cancel()
        assert queued.result(timeout=60).finish_reason == "abort" and queued.result().token_ids == []
        assert not running.done and engine.stats().waiting == 0
        running.cancel()
        assert running.result(timeout=60).finish_reason == "abort"


def test_requests_from_many_threads(model):
    prompts = prompts_of([3, 6, 9, 12], seed=6)
    expected = [forward_greedy(model, p, 16)[0] for p in prompts]
    got = [None] * 4
    with Engine(model, max_batch_size=2) as engine:
        def worker(i):
            got[i] = engine.generate(prompts[i], GREEDY)[0].token_ids

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert got == expected


def test_sampler_draws_from_the_filtered_tempered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    n = 4000
    for params, keep in [(SamplingParams(temperature=0.7, top_p=1.0), 6),
                         (SamplingParams(temperature=1.3, top_k=3, top_p=1.0), 3),
                         (SamplingParams(temperature=1.0, top_p=0.8), 3),
                         (SamplingParams(temperature=1.0, top_p=1.0, min_p=0.2), 3)]:
        rows = [SamplerRow.create(params.__class__(**{**params.__dict__, "seed": s}), [0], 6, torch.device("cpu"))
                for s in range(n)]
        tokens, _ = sample(logits.expand(n, 6), rows)
        probs = torch.softmax(logits[0] / params.temperature, -1)
        probs[keep:] = 0
        freq = torch.bincount(tokens, minlength=6).float() / n
        torch.testing.assert_close(freq, probs / probs.sum(), atol=0.025, rtol=0)


def reference_draw(logits: torch.Tensor, params: SamplingParams) -> int:
    """One row's token by the definition: the whole vocabulary sorted, top-k, Meta's top-p rule and min-p
    applied, then an inverse-CDF draw with the first uniform of the row's seeded generator."""
    probs = torch.softmax(logits / params.temperature, -1)
    sorted_probs, order = probs.sort(descending=True)
    ranks = torch.arange(len(probs))
    keep = (ranks < (params.top_k or len(probs))) & (sorted_probs.cumsum(0) - sorted_probs <= params.top_p)
    keep &= sorted_probs >= params.min_p * sorted_probs[0]
    cdf = (sorted_probs * keep).cumsum(0)
    u = torch.rand(1, generator=torch.Generator().manual_seed(params.seed))
    return int(order[torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=len(probs) - 1)])


def test_top_k_and_top_p_sort_candidates_first_and_draw_what_a_whole_sort_draws():
    """Peaked rows are decided within the 256 most likely tokens, a top-k of 300 within 4,096, flat rows only
    by the whole vocabulary: every level gives the tokens of the definition."""
    g = torch.Generator().manual_seed(0)
    vocab = 6000
    peaked, flat = torch.randn(16, vocab, generator=g) * 6, torch.randn(16, vocab, generator=g) * 0.1
    for logits in (peaked, flat):
        for params in [SamplingParams(temperature=0.7, top_p=0.9), SamplingParams(temperature=1.0, top_k=300, top_p=1.0),
                       SamplingParams(temperature=1.0, top_p=0.5, min_p=0.05),
                       SamplingParams(temperature=1.2, top_k=5000, top_p=0.99)]:
            seeded = [dataclasses.replace(params, seed=s) for s in range(len(logits))]
            rows = [SamplerRow.create(p, [0], vocab, torch.device("cpu")) for p in seeded]
            tokens, _ = sample(logits, rows)
            assert tokens.tolist() == [reference_draw(row, p) for row, p in zip(logits, seeded)]


def test_penalties_follow_their_formulas():
    params = SamplingParams(temperature=0, repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    row = SamplerRow.create(params, [0, 1], 5, torch.device("cpu"))
    for token in (2, 2, 1):
        row.record(token)
    logits = torch.tensor([1.0, -1.0, 3.0, -2.0, 0.5])
    # repetition on prompt and output tokens (0, 1, 2); frequency and presence on output tokens (1 once, 2 twice)
    expected = torch.tensor([0.5, -2.0 - 0.5 - 0.25, 1.5 - 1.0 - 0.25, -2.0, 0.5])
    torch.testing.assert_close(row.penalize(logits), expected)


def test_bad_input_gives_clear_errors(model):
    for bad in (dict(temperature=-1), dict(top_p=0), dict(max_tokens=0), dict(logprobs=-1), dict(stop=[""])):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    with Engine(model, max_seq_len=16) as engine:
        with pytest.raises(ValueError, match="16 positions"):
            engine.submit(list(range(16)))
        with pytest.raises(ValueError, match="outside the vocabulary"):
            engine.submit([1, 400])
        with pytest.raises(ValueError, match="tokenizer"):
            engine.submit("text")
        result = engine.generate(list(range(10)), SamplingParams(temperature=0, max_tokens=50))[0]
    assert len(result.token_ids) == 6 and result.finish_reason == "length"  # clipped to the 16 positions


@pytest.mark.parametrize("user_env, expected", [
    ({}, ("ACTIVE", "300000")),  # pasture's default: spin a bounded while, whatever thread counts libgomp sees
    ({"OMP_WAIT_POLICY": "PASSIVE"}, ("PASSIVE", None)),  # a user's own OpenMP settings are left alone
    ({"GOMP_SPINCOUNT": "1000"}, (None, "1000")),
])
def test_importing_pasture_sets_libgomps_wait_policy_unless_the_user_did(user_env, expected):
    """The engine's thread and the main thread both run torch ops, which throttles libgomp's spinning to ~1,000
    turns: its workers sleep and wake between a decode step's parallel regions. `import pasture` sets the wait
    policy before torch loads libgomp (a fresh process: the variables are read once, at load)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | user_env
    script = "import os, pasture, torch; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert tuple(None if v == "None" else v for v in out.split()) == expected

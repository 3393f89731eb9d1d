"""A real (tiny) model trained to memorize a few chat replies, for serving tests.

Random weights say nothing checkable; a model that learned exact replies lets the tests
assert the served text, tool calls and usage token for token. Training takes a few
seconds on CPU, and the fixture checks the memorization before any test relies on it.
"""

from __future__ import annotations

import torch

from pasture.model import ModelConfig, Transformer
from pasture.serve.served import llama3_chat_encoder
from pasture.tokenizer import Tokenizer
from pasture.tokenizer.chat_format import ChatFormat

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CAPITAL_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CAPITAL_REPLY = "The capital of France is **Paris**.\n\n```python\nprint('Paris')\n```"
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_CALL = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
COMPLETION_PROMPT = "Once upon a time"
COMPLETION_TEXT = " there was a little pasture by the river."


def byte_tokenizer() -> Tokenizer:
    """Llama 3's special tokens over the 256 bytes alone: a 512-entry vocabulary keeps training fast."""
    return Tokenizer({bytes([b]): b for b in range(256)}, name="bytes")


def _examples(tok: Tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt, reply) pairs; the model learns each reply after its prompt."""
    encode = llama3_chat_encoder(ChatFormat(tok))
    return [
        (encode(CAPITAL_QUESTION, None), tok.encode(CAPITAL_REPLY) + [tok.eot_id]),
        (encode(WEATHER_QUESTION, [WEATHER_TOOL]), [tok.python_tag_id] + tok.encode(WEATHER_CALL) + [tok.eom_id]),
        (tok.encode(COMPLETION_PROMPT, bos=True), tok.encode(COMPLETION_TEXT) + [tok.eos_id]),
    ]


def tiny_model(tok: Tokenizer, seed: int = 0) -> Transformer:
    """A small Llama over the byte tokenizer, randomly initialised: it rarely stops on its own,
    which the tests that need long generations (disconnects, limits, load) rely on."""
    torch.manual_seed(seed)
    config = ModelConfig(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size, multiple_of=32,
                         ffn_dim_multiplier=None, max_seq_len=1024, rope_theta=10_000.0, rope_scaling=None,
                         tie_embeddings=True)
    model = Transformer(config)
    model.init_weights()
    return model.eval()


def memorized_model(tok: Tokenizer, max_steps: int = 300) -> Transformer:
    """Trains until every example is predicted exactly (greedy), then returns the model in eval mode."""
    model = tiny_model(tok).train()
    rows = []  # one row per example, unpadded: the long tool prompt does not pad the others
    for prompt, reply in _examples(tok):
        targets = torch.full((1, len(prompt) + len(reply)), -100)
        targets[0, len(prompt) - 1:-1] = torch.tensor(reply)
        rows.append((torch.tensor([prompt + reply]), targets))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small only lose time to a second thread
    try:
        return _train_until_memorized(model, rows, optimizer, max_steps)
    finally:
        torch.set_num_threads(threads)


def _train_until_memorized(model: Transformer, rows, optimizer, max_steps: int) -> Transformer:
    for step in range(max_steps):
        optimizer.zero_grad()
        memorized = True
        for tokens, targets in rows:
            logits = model(tokens)
            loss = torch.nn.functional.cross_entropy(logits[0], targets[0], ignore_index=-100)
            loss.backward()
            with torch.no_grad():
                memorized &= bool(((logits[0].argmax(-1) == targets[0]) | (targets[0] == -100)).all())
        if memorized:
            return model.eval()
        optimizer.step()
    raise AssertionError(f"the fixture model did not memorize its examples in {max_steps} steps")

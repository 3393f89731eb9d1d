"""Small tokenizers, chat encoders and models for the post-training tests (no downloads)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers

from pasture.model import ModelConfig, build
from pasture.post.encode import Llama3Encoder, TemplateEncoder, encoder_for
from pasture.tokenizer import Tokenizer
from pasture.tokenizer.hf import HFTokenizer

USER_ASSISTANT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]

# ChatML as SmolLM2 / Qwen write it, with Qwen-style tool calls
CHATML = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + ('tool' if m['role'] == 'ipython' else m['role']) + '\n' + m['content'] }}"
    "{% for call in m.get('tool_calls', []) %}"
    "{{ '<tool_call>' + call['tool_name'] + ' ' + (call['arguments'] | tojson) + '</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@contextmanager
def one_thread():
    """Tiny models run fastest on one thread (and a busy machine makes thread hand-offs costly)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def byte_tokenizer() -> Tokenizer:
    """Llama 3's tokenizer layout with no merges: ids 0..255 are bytes, 256.. the specials."""
    return Tokenizer({bytes([i]): i for i in range(256)}, name="bytes")


def llama3_encoder() -> Llama3Encoder:
    return Llama3Encoder(byte_tokenizer())


def chatml_tokenizer() -> HFTokenizer:
    """Byte-level BPE without merges plus ChatML's two special tokens (ids 256, 257), SmolLM2's
    layout: <|im_end|> is both eos and pad (the pad = eos setup of the classic reward bug)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = BackendTokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return HFTokenizer(json.loads(tok.to_str()), eos_id=257, pad_id=257, chat_template=CHATML, name="chatml-bytes")


def chatml_encoder() -> TemplateEncoder:
    return encoder_for(chatml_tokenizer())


def tiny_config(vocab: int = 512, **changes) -> ModelConfig:
    fields = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab, multiple_of=16,
                  ffn_dim_multiplier=None, rope_scaling=None, max_seq_len=512, tie_embeddings=False)
    return ModelConfig(**{**fields, **changes})


def tiny_model(seed: int = 0, **changes):
    return build(tiny_config(**changes), seed=seed)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def qa_preferences(n: int = 8) -> list[dict]:
    """Arithmetic questions with the right answer chosen and a wrong one rejected."""
    records = []
    for i in range(n):
        a, b = i + 2, 3 * i + 1
        records.append({"messages": [{"role": "user", "content": f"What is {a}+{b}?"}],
                        "chosen": {"role": "assistant", "content": f"{a + b}"},
                        "rejected": {"role": "assistant", "content": f"{a + b + 7} maybe"}})
    return records


def qa_conversations(n: int = 8) -> list[dict]:
    return [{"messages": [*r["messages"], r["chosen"]]} for r in qa_preferences(n)]

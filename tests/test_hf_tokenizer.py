"""Tokenizers that are not tiktoken files (tokenizer.json, GGUF vocabularies), Tokenizer.load's
dispatch, and Jinja chat templates rendered as transformers renders them."""

import json

import pytest
import torch
from test_tokenizer import VARIED_TEXTS
from transformers import AutoTokenizer

from pasture import model as pm
from pasture.model.config import ModelConfig
from pasture.model.gguf import write_gguf
from pasture.tokenizer.hf import TOKEN_CONTROL, TOKEN_NORMAL, build_spec, merges_from_ranks, spell_bytes
from pasture.tokenizer import (
    ChatFormat,
    ChatFormatError,
    ChatTemplate,
    HFTokenizer,
    Tokenizer,
    TokenizerError,
    as_hf_tokenizer,
    chat_format_for,
    write_bpe_ranks,
)

DIALOG = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Name a llama fact 🦙, please."},
    {"role": "assistant", "content": "Llamas hum."},
    {"role": "user", "content": "Another, in 日本語?"},
]
# ChatML with the habits of real templates: BOS written by the template, a default system
# prompt on loop.first, raise_exception, tojson of non-ASCII text, a {% generation %} block.
CHATML = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + message['role']) }}{% endif %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nDefault {{ 'ü' | tojson }}<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ message['content'] }}<|im_end|>{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def llama3() -> Tokenizer:
    return Tokenizer.load("llama3")


@pytest.fixture(scope="module")
def llama3_gguf(llama3, tmp_path_factory) -> tuple[Tokenizer, object]:
    """Meta's tokenizer written into a GGUF beside a small model, and read back from it."""
    config = ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=llama3.n_words, multiple_of=32,
                         ffn_dim_multiplier=None, rope_scaling=None, max_seq_len=64)
    path = tmp_path_factory.mktemp("gguf") / "llama3.gguf"
    write_gguf(pm.build(config, seed=0).state_dict(), config, path, dtype="float16",
               tokenizer_fields=as_hf_tokenizer(llama3).gguf_fields(), progress=False)
    return Tokenizer.load(path), path


@pytest.mark.parametrize("name", sorted(VARIED_TEXTS))
def test_llama3_vocabulary_from_gguf_gives_meta_ids(llama3, llama3_gguf, name):
    text = VARIED_TEXTS[name]
    ours, _ = llama3_gguf
    assert isinstance(ours, HFTokenizer)
    assert ours.encode(text, bos=True) == llama3.encode(text, bos=True)
    assert ours.encode(text, allowed_special="all") == llama3.encode(text, allowed_special="all")
    assert ours.decode(llama3.encode(text, allowed_special="all")) == llama3.decode(llama3.encode(text, allowed_special="all"))


def test_llama31_stop_ids_and_chat_format_from_gguf(llama3, llama3_gguf):
    ours, _ = llama3_gguf
    assert sorted(ours.stop_tokens) == [128001, 128008, 128009]
    assert (ours.bos_id, ours.eot_id, ours.eom_id, ours.add_bos) == (128000, 128009, 128008, True)
    chat = chat_format_for(ours)
    assert isinstance(chat, ChatFormat)
    want = ChatFormat(llama3).encode_dialog_prompt(DIALOG)
    assert chat.encode_dialog_prompt(DIALOG) == want
    # the Jinja template written into the file renders the same ids, with one BOS
    assert ChatTemplate(ours, ours.chat_template).encode_dialog_prompt(DIALOG).tokens == want.tokens
    assert want.tokens.count(128000) == 1


def test_special_token_text_is_plain_unless_allowed(llama3_gguf):
    ours, _ = llama3_gguf
    text = "a<|eot_id|>b<|python_tag|>"
    plain = ours.encode(text)
    assert 128009 not in plain and 128010 not in plain
    assert ours.encode(text, allowed_special={"<|eot_id|>"}) == ours.encode("a") + [128009] + ours.encode("b<|python_tag|>")
    assert ours.encode(text, allowed_special="all")[-1] == 128010
    with pytest.raises(ValueError, match="disallowed"):
        ours.encode(text, disallowed_special="all")
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        ours.decode([ours.n_words])


def small_tiktoken(folder) -> Tokenizer:
    merged = [b"th", b"the", b" t", b" the", b"in", b"ing", b"  ", b"    ", b"12", b"er", b"<|", b"im"]
    write_bpe_ranks([bytes([b]) for b in range(256)] + merged, folder / "tokenizer.model")
    return Tokenizer.load(folder / "tokenizer.model")


def test_load_accepts_every_form(tmp_path, llama3_gguf):
    tiktoken_folder = tmp_path / "run" / "tokenizer"
    tiktoken_folder.mkdir(parents=True)
    tok = small_tiktoken(tiktoken_folder)
    checkpoint = tmp_path / "run" / "tokenizer" / "checkpoints" / "step_1"
    checkpoint.mkdir(parents=True)
    hf_folder = tmp_path / "hf"
    as_hf_tokenizer(tok).save(hf_folder)
    gguf_folder = llama3_gguf[1].parent
    cases = {
        tiktoken_folder / "tokenizer.model": Tokenizer,
        tiktoken_folder: Tokenizer,
        tmp_path / "run": Tokenizer,  # a speedrun folder: tokenizer/tokenizer.model
        checkpoint: Tokenizer,  # a checkpoint inside a run folder
        hf_folder / "tokenizer.json": HFTokenizer,
        hf_folder: HFTokenizer,
        llama3_gguf[1]: HFTokenizer,
        gguf_folder: HFTokenizer,  # a folder holding one .gguf
    }
    for path, kind in cases.items():
        loaded = Tokenizer.load(path)
        assert type(loaded) is kind, path
    assert Tokenizer.load(hf_folder).encode("the thing 12 ünï", bos=True) == tok.encode("the thing 12 ünï", bos=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer in"):
        Tokenizer.load(tmp_path / "empty")


@pytest.fixture(scope="module")
def chatml_folder(tmp_path_factory):
    """A small byte-level BPE with ChatML specials (no Llama 3 headers), saved as a Hugging Face folder."""
    folder = tmp_path_factory.mktemp("chatml")
    ranks = small_tiktoken(folder).mergeable_ranks
    tokens = [spell_bytes(t) for t in sorted(ranks, key=ranks.get)] + ["<s>", "<|im_start|>", "<|im_end|>"]
    merges = [" ".join(pair) for pair in merges_from_ranks(ranks)]
    spec = build_spec(tokens, merges, [TOKEN_NORMAL] * len(ranks) + [TOKEN_CONTROL] * 3, "llama-bpe")
    chatml = HFTokenizer(spec, bos_id=len(ranks), eos_id=len(ranks) + 2, add_bos=False, chat_template=CHATML)
    chatml.save(folder / "hf")
    return folder / "hf"


@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize("with_system", [True, False])
def test_chat_template_renders_as_transformers(chatml_folder, generation_prompt, with_system):
    ours = Tokenizer.load(chatml_folder)
    theirs = AutoTokenizer.from_pretrained(chatml_folder)
    dialog = DIALOG if with_system else DIALOG[1:]
    if not generation_prompt:
        dialog = dialog[:-1]
    chat = chat_format_for(ours)
    assert isinstance(chat, ChatTemplate)
    text = theirs.apply_chat_template(dialog, tokenize=False, add_generation_prompt=generation_prompt)
    assert chat.render(dialog, add_generation_prompt=generation_prompt) == text
    encoded = chat.encode_dialog_prompt(dialog, add_generation_prompt=generation_prompt)
    want = theirs.apply_chat_template(dialog, tokenize=True, add_generation_prompt=generation_prompt,
                                      return_dict=True)["input_ids"]
    assert encoded.tokens == list(want)
    assert encoded.tokens.count(ours.bos_id) == 1 and encoded.tokens[0] == ours.bos_id  # no double BOS
    # trim_blocks ate the newline after {% endif %}: the reply ends at <|im_end|>
    assert ours.decode([t for t, m in zip(encoded.tokens, encoded.loss_mask) if m]) == "Llamas hum.<|im_end|>"


def test_chat_template_errors(chatml_folder):
    chat = chat_format_for(Tokenizer.load(chatml_folder))
    with pytest.raises(ChatFormatError, match="bad role tool"):
        chat.encode_dialog_prompt([{"role": "tool", "content": "x"}])
    with pytest.raises(ChatFormatError, match="does not parse"):
        ChatTemplate(chat.tokenizer, "{% for %}")
    unstable = ChatTemplate(chat.tokenizer, "{% for m in messages %}{{ m['content'] if loop.last else 'x' }}{% endfor %}")
    with pytest.raises(ChatFormatError, match="differently inside the dialog"):
        unstable.encode_dialog_prompt(DIALOG[1:3] + DIALOG[3:], add_generation_prompt=False)


def test_transformers_reads_our_tokenizer_json(chatml_folder):
    ours = Tokenizer.load(chatml_folder)
    theirs = AutoTokenizer.from_pretrained(chatml_folder)
    for text in VARIED_TEXTS.values():
        assert theirs(text)["input_ids"] == ours.encode(text, bos=ours.add_bos, allowed_special="all")
    assert torch.tensor(theirs.encode("the thing")).tolist() == ours.encode("the thing")

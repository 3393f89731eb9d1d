"""GGUF in and out on small models: dequantization against transformers' independent
dequantizer, llama.cpp's q/k permutation, metadata, round trips and `pasture convert`."""

import json

import gguf
import numpy as np
import pytest
import torch
from transformers.integrations.gguf import dequant as hf_dequant

from pasture import model as pm
from pasture.cli import main
from pasture.model.config import ModelConfig, RopeScaling
from pasture.model.convert import CheckpointError
from pasture.model.gguf import dequantize, gguf_tensor_types, metadata_value, open_gguf, read_gguf, write_gguf
from pasture.tokenizer import Tokenizer, write_bpe_ranks

Q = gguf.GGMLQuantizationType
# byte offsets of the fp16 scale fields in one block, which random bytes must not turn into inf / NaN
SCALE_OFFSETS = {Q.Q8_0: (0,), Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q4_K: (0, 2), Q.Q6_K: (208,)}


def small_config(**kw) -> ModelConfig:
    """GQA with 2 KV heads for 8 query heads, so a wrong head count in the wk permutation shows."""
    base = dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=300, multiple_of=32,
                ffn_dim_multiplier=None, rope_theta=500_000.0, rope_scaling=None, max_seq_len=128)
    return ModelConfig(**{**base, **kw})


def assert_same_model_shape(got: ModelConfig, want: ModelConfig) -> None:
    """Equal configs, up to how the FFN width is spelled (a GGUF stores only the width)."""
    spelling = ("multiple_of", "ffn_dim_multiplier", "ffn_dim")
    assert {k: v for k, v in got.to_dict().items() if k not in spelling} == \
        {k: v for k, v in want.to_dict().items() if k not in spelling}
    assert got.ffn_hidden_dim == want.ffn_hidden_dim


def random_blocks(qtype, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Random quantized rows of `qtype` whose scales are ordinary fp16 numbers."""
    rng = np.random.default_rng(seed)
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows, cols // block_size, type_size), dtype=np.uint8)
    for offset in SCALE_OFFSETS[qtype]:
        scales = rng.uniform(0.001, 0.1, size=blocks.shape[:2]).astype(np.float16)
        blocks[..., offset:offset + 2] = scales.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K, Q.F16, Q.BF16, Q.F32])
def test_dequantize_matches_transformers_reference(tmp_path, qtype):
    """Every block type read back through a GGUF file equals transformers' own torch dequantizer
    (an implementation independent of the gguf library); float types equal their values."""
    rows, cols = 3, 512
    values = np.random.default_rng(1).standard_normal((rows, cols)).astype(np.float32)
    if qtype in SCALE_OFFSETS:
        raw = random_blocks(qtype, rows, cols)
        expected = hf_dequant.dequantize(torch.from_numpy(raw.copy()), int(qtype)).reshape(rows, cols).numpy()
    elif qtype == Q.BF16:
        raw = gguf.quants.quantize(values, qtype)
        expected = torch.from_numpy(values).to(torch.bfloat16).float().numpy()
    else:
        raw = values.astype(np.float16) if qtype == Q.F16 else values
        expected = raw.astype(np.float32)
    writer = gguf.GGUFWriter(tmp_path / "t.gguf", "llama")
    writer.add_tensor("t", raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (tensor,) = open_gguf(tmp_path / "t.gguf").tensors
    got = dequantize(tensor)
    assert got.shape == (rows, cols) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert np.isfinite(got).all() and np.abs(got).max() > 0


def llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's convert_hf_to_gguf `permute`: half-split rotary rows -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_written_qk_rows_are_llama_cpp_permuted_and_read_back(tmp_path):
    config = small_config()
    model = pm.build(config, seed=0)
    path = write_gguf(model.state_dict(), config, tmp_path / "m.gguf", dtype="float32", progress=False)
    stored = {t.name: torch.from_numpy(dequantize(t)) for t in open_gguf(path).tensors}
    attention = model.layers[1].attention
    assert torch.equal(stored["blk.1.attn_q.weight"], llama_cpp_permute(attention.wq.weight.detach(), 8))
    assert torch.equal(stored["blk.1.attn_k.weight"], llama_cpp_permute(attention.wk.weight.detach(), 2))
    assert torch.equal(stored["blk.1.attn_v.weight"], attention.wv.weight.detach())
    state, read_config = read_gguf(path, progress=False)
    assert_same_model_shape(read_config, config)
    assert torch.equal(state["layers.1.attention.wq.weight"], attention.wq.weight.detach())
    assert torch.equal(state["layers.1.attention.wk.weight"], attention.wk.weight.detach())


def test_metadata_is_llama_cpp_standard(tmp_path):
    config = small_config(norm_eps=1e-6, tie_embeddings=True)
    path = write_gguf(pm.build(config, seed=0).state_dict(), config, tmp_path / "m.gguf", dtype="float16",
                      progress=False)
    reader = open_gguf(path)
    expected = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64,
                "llama.feed_forward_length": config.ffn_hidden_dim, "llama.attention.head_count": 8,
                "llama.attention.head_count_kv": 2, "llama.rope.freq_base": 500_000.0,
                "llama.rope.dimension_count": 8, "llama.context_length": 128, "llama.vocab_size": 300,
                "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16)}
    assert {k: metadata_value(reader, k) for k in expected} == expected
    assert metadata_value(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6, rel=1e-6)
    types = gguf_tensor_types(path)
    assert "output.weight" not in types  # tied: llama.cpp reuses token_embd
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.ffn_down.weight"] == "F16"


def rounded_like(model: torch.nn.Module, qtype) -> torch.nn.Module:
    """The model with every matrix passed through `qtype` and back, as a GGUF stores it."""
    rounded = {}
    for key, value in model.state_dict().items():
        if value.ndim == 2:
            raw = gguf.quants.quantize(value.numpy(), qtype)
            value = torch.from_numpy(np.array(gguf.quants.dequantize(raw, qtype), dtype=np.float32))
        rounded[key] = value
    copy = pm.build(model.config)
    copy.load_state_dict(rounded)
    return copy.eval()


@pytest.mark.parametrize("dtype,qtype", [("float32", Q.F32), ("float16", Q.F16), ("bfloat16", Q.BF16), ("q8_0", Q.Q8_0)])
@pytest.mark.parametrize("scaled_rope", [False, True])
def test_round_trip_logits(tmp_path, dtype, qtype, scaled_rope):
    """Write, read back: the config is the same and the logits equal those of the model with its
    weights rounded to the stored type (exactly the model's own for float32)."""
    scaling = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    config = small_config(rope_scaling=scaling if scaled_rope else None, rope_theta=10_000.0)
    model = pm.build(config, seed=0).eval()
    path = write_gguf(model.state_dict(), config, tmp_path / f"m-{dtype}.gguf", dtype=dtype, progress=False)
    loaded, loaded_config = pm.load(path)
    assert_same_model_shape(loaded_config, config)
    tokens = torch.randint(0, config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = loaded(tokens)
        want = (model if dtype == "float32" else rounded_like(model, qtype))(tokens)
    if dtype == "float32":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert not torch.equal(got, model(tokens))  # the rounding is real


def test_rope_freqs_tensor_holds_llama31_divisors(tmp_path):
    config = small_config(rope_scaling=RopeScaling(factor=8.0))
    path = write_gguf(pm.build(config, seed=0).state_dict(), config, tmp_path / "m.gguf", dtype="float32",
                      progress=False)
    factors = next(dequantize(t) for t in open_gguf(path).tensors if t.name == "rope_freqs.weight")
    # head_dim 8: wavelengths 2*pi*theta^(i/4) for i=0..3; theta 500k puts the last one past 8192 / 1
    wavelengths = 2 * np.pi * 500_000.0 ** (np.arange(0, 8, 2) / 8)
    assert factors.shape == (4,) and factors[0] == 1.0
    assert factors[wavelengths > 8192].tolist() == [8.0] * int((wavelengths > 8192).sum())


def tiny_tiktoken(folder) -> Tokenizer:
    """A small byte-level BPE in tiktoken format: the 256 bytes and a few merges."""
    merged = [b"th", b"the", b" t", b" the", b"in", b"ing", b"  ", b"    ", b"12", b"er"]
    write_bpe_ranks([bytes([b]) for b in range(256)] + merged, folder / "tokenizer.model")
    return Tokenizer.load(folder / "tokenizer.model")


TEXTS = ["the thing", "  indented\n    more", "12 123 1212", "naïve 日本 🦙", "<|begin_of_text|>x<|eot_id|>"]


def test_convert_cli_to_gguf_and_back(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    tokenizer = tiny_tiktoken(src)
    config = small_config(vocab_size=tokenizer.n_words, tie_embeddings=True)
    model = pm.build(config, seed=0).eval()
    pm.save(model, src)

    assert main(["convert", str(src), str(tmp_path / "m.gguf"), "--to", "gguf", "--dtype", "q8_0"]) == 0
    from_gguf = Tokenizer.load(tmp_path / "m.gguf")
    for text in TEXTS:
        for special in (frozenset(), "all"):
            assert from_gguf.encode(text, allowed_special=special) == tokenizer.encode(text, allowed_special=special)
    assert sorted(from_gguf.stop_tokens) == sorted(tokenizer.stop_tokens)
    assert (from_gguf.bos_id, from_gguf.add_bos) == (tokenizer.bos_id, True)
    assert gguf_tensor_types(tmp_path / "m.gguf")["token_embd.weight"] == "Q8_0"

    assert main(["convert", str(tmp_path / "m.gguf"), str(tmp_path / "back"), "--to", "pasture"]) == 0
    gguf_model, _ = pm.load(tmp_path / "m.gguf")
    back, back_config = pm.load(tmp_path / "back")
    assert_same_model_shape(back_config, config)
    tokens = torch.tensor([tokenizer.encode("the thing 12", bos=True)])
    with torch.no_grad():
        assert torch.equal(back(tokens), gguf_model(tokens))
        torch.testing.assert_close(back(tokens), rounded_like(model, Q.Q8_0)(tokens), rtol=1e-5, atol=1e-5)
    assert Tokenizer.load(tmp_path / "back").encode(TEXTS[0]) == tokenizer.encode(TEXTS[0])

    assert main(["convert", str(tmp_path / "m.gguf"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    hf_files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= hf_files
    assert sorted(json.loads((tmp_path / "hf" / "generation_config.json").read_text())["eos_token_id"]) == \
        sorted(tokenizer.stop_tokens)
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())  # the tokenizer's ids, in its vocabulary
    assert (hf_config["bos_token_id"], hf_config["eos_token_id"]) == (tokenizer.bos_id, tokenizer.eos_id)
    assert max(tokenizer.bos_id, tokenizer.eos_id) < hf_config["vocab_size"]


def test_bad_inputs_fail_with_one_line(tmp_path, capsys):
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        read_gguf(tmp_path / "x.gguf")
    writer = gguf.GGUFWriter(tmp_path / "gpt2.gguf", "gpt2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="architecture is 'gpt2'"):
        read_gguf(tmp_path / "gpt2.gguf")
    src = tmp_path / "src"
    config = small_config()
    pm.save(pm.build(config, seed=0), src)
    assert main(["convert", str(src), str(tmp_path / "out"), "--to", "hf", "--dtype", "q8_0"]) == 2
    assert "q8_0 is a GGUF quantization" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "out.gguf"), "--to", "gguf"]) == 2
    assert "pass --tokenizer" in capsys.readouterr().err

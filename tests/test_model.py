"""The Llama 3 model against its published sizes and against Hugging Face transformers."""

import json

import pytest
import torch

from pasture import model as pm
from pasture.cli import main
from pasture.model.config import ModelConfig, RopeScaling
from pasture.model.convert import config_to_hf
from pasture.model.info import flops_per_token, num_matmul_params, num_params
from pasture.model.llama import KVCache, rope_inverse_frequencies

PUBLISHED = {  # parameters and FFN width from Meta's configs (reference facts §1.1)
    "llama3.2-1b": (1_235_814_400, 8192),
    "llama3.2-3b": (3_212_749_824, 8192),
    "llama3.1-8b": (8_030_261_248, 14336),
    "llama3.1-70b": (70_553_706_496, 28672),
    "llama3.1-405b": (405_853_388_800, 53248),
}


def small_config(**kw) -> ModelConfig:
    """GQA (4 query heads per KV head) and 3.1 RoPE scaling that bites at these lengths."""
    base = dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=320, multiple_of=32,
                ffn_dim_multiplier=1.3, rope_theta=500_000.0,
                rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_position_embeddings=64),
                max_seq_len=256)
    base.update(kw)
    return ModelConfig(**base)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_presets_match_published_sizes_on_meta_device(name):
    params, ffn = PUBLISHED[name]
    config = pm.preset(name)
    assert config.ffn_hidden_dim == ffn
    assert config.vocab_size == 128_256 and config.n_kv_heads == 8 and config.rope_theta == 500_000
    assert num_params(config) == params
    model = pm.build(config, device="meta")
    assert sum(p.numel() for p in model.parameters()) == params
    assert (config.rope_scaling.factor, config.tie_embeddings) == ((32.0, True) if "3.2" in name else (8.0, False))


def test_flops_per_token_formula():
    c = pm.preset("llama3.1-8b")
    n = num_matmul_params(c)
    assert n == 8_030_261_248 - 128_256 * 4096 - (2 * 32 + 1) * 4096  # no embedding lookup, no norms
    assert flops_per_token(c, 8192) == 6 * n + 12 * 32 * 32 * 128 * 8192


def test_rope_scaling_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for factor in (8.0, 32.0):
        cfg = pm.preset("llama3.2-1b")
        cfg.rope_scaling.factor = factor
        hf = LlamaConfig(hidden_size=2048, num_attention_heads=32, max_position_embeddings=131072,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": factor,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192})
        ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
        torch.testing.assert_close(rope_inverse_frequencies(cfg), ref.float(), rtol=1e-6, atol=0)


def _hf_logits(folder, tokens):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return hf(tokens).logits


@pytest.mark.parametrize("tied", [False, True])
def test_logits_match_transformers_after_hf_export(tmp_path, tied):
    torch.manual_seed(0)
    config = small_config(tie_embeddings=tied)
    model = pm.build(config, seed=1).eval()
    tokens = torch.randint(0, config.vocab_size, (2, 96))  # longer than the original 64: scaling matters
    pm.save(model, tmp_path / "hf", "hf")
    with torch.no_grad():
        ours = model(tokens)
    assert rel_err(ours, _hf_logits(tmp_path / "hf", tokens)) < 1e-5


def test_hf_model_loads_into_pasture(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf_cfg = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=300, max_position_embeddings=256, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 64})
    hf = LlamaForCausalLM(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    model, config = pm.load(tmp_path / "hf")
    assert config.ffn_hidden_dim == 176 and config.rope_scaling.factor == 8.0
    tokens = torch.randint(0, 300, (2, 80))
    with torch.no_grad():
        assert rel_err(model(tokens), hf(tokens).logits) < 1e-5


def test_meta_round_trip_and_permutation(tmp_path):
    torch.manual_seed(0)
    config = small_config()
    model = pm.build(config, seed=2).eval()
    tokens = torch.randint(0, config.vocab_size, (1, 90))
    assert main(["convert", str(_save(model, tmp_path / "ours")), str(tmp_path / "meta"), "--to", "meta"]) == 0
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    assert params["use_scaled_rope"] and params["n_kv_heads"] == 2
    meta_state = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)
    # Meta stores q rows interleaved: its row 1 is our row hd/2 of head 0
    hd = config.head_dim
    torch.testing.assert_close(meta_state["layers.0.attention.wq.weight"][1], model.layers[0].attention.wq.weight[hd // 2])
    assert main(["convert", str(tmp_path / "meta"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    reloaded, _ = pm.load(tmp_path / "meta")
    with torch.no_grad():
        assert rel_err(reloaded(tokens), model(tokens)) < 1e-6
    assert rel_err(_hf_logits(tmp_path / "hf", tokens), model(tokens).detach()) < 1e-5


def _save(model, folder):
    pm.save(model, folder, "pasture")
    return folder


def test_meta_tied_small_model_gets_factor_32(tmp_path):
    config = small_config(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=64, multiple_of=256,
                          ffn_dim_multiplier=1.5, tie_embeddings=True, rope_scaling=RopeScaling(factor=32.0),
                          max_seq_len=131_072)
    from pasture.model.convert import config_from_meta, config_to_meta

    params = config_to_meta(config)
    params.pop("rope_scaling")  # as in Meta's own params.json
    assert config_from_meta(params, tied=True) == config  # every field back, factor 32 included
    untied = config_from_meta(params, tied=False)
    assert untied.rope_scaling.factor == 8.0 and not untied.tie_embeddings


def test_document_mask_equals_separate_documents():
    torch.manual_seed(0)
    config = small_config()
    model = pm.build(config, seed=3, attention_backend="sdpa").eval()
    a = torch.randint(0, config.vocab_size, (1, 30))
    b = torch.randint(0, config.vocab_size, (1, 50))
    packed = torch.cat([a, b], dim=1)
    doc_ids = torch.tensor([[0] * 30 + [1] * 50])
    with torch.no_grad():
        out = model(packed, doc_ids)
        torch.testing.assert_close(out[:, :30], model(a), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[:, 30:], model(b), rtol=1e-5, atol=1e-5)
        # without the mask, document b would see document a and its positions would not restart
        assert (model(packed)[:, 30:] - model(b)).abs().max() > 1e-3


def test_flex_attention_equals_sdpa_with_mask():
    torch.manual_seed(0)
    config = small_config()
    sdpa = pm.build(config, seed=4, attention_backend="sdpa").eval()
    flex = pm.build(config, seed=4, attention_backend="flex").eval()
    tokens = torch.randint(0, config.vocab_size, (2, 128))
    doc_ids = torch.tensor([[0] * 40 + [1] * 60 + [2] * 28, [5] * 128])
    with torch.no_grad():
        torch.testing.assert_close(flex(tokens, doc_ids), sdpa(tokens, doc_ids), rtol=1e-5, atol=1e-5)


def test_kv_cache_decoding_equals_full_forward():
    torch.manual_seed(0)
    config = small_config()
    model = pm.build(config, seed=5).eval()
    tokens = torch.randint(0, config.vocab_size, (2, 40))
    cache = KVCache(config, batch_size=2, max_len=64, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        full = model(tokens)
        steps = [model(tokens[:, :25], cache=cache)]
        for t in range(25, 40):
            steps.append(model(tokens[:, t:t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_hf_config_names_llama3_special_ids_only_when_the_vocabulary_holds_them():
    assert (config_to_hf(small_config())["bos_token_id"], config_to_hf(small_config())["eos_token_id"]) == (None, None)
    llama3_vocab = config_to_hf(small_config(vocab_size=128256))
    assert (llama3_vocab["bos_token_id"], llama3_vocab["eos_token_id"]) == (128000, 128001)
    assert config_to_hf(small_config(), bos_eos=(1, 2))["eos_token_id"] == 2


def test_bad_checkpoints_give_one_line_errors(tmp_path, capsys):
    torch.manual_seed(0)
    config = small_config()
    model = pm.build(config, seed=6)
    folder = _save(model, tmp_path / "ok")

    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x"), "--to", "hf"]) == 2
    assert "does not exist" in capsys.readouterr().err

    corrupt = _save(model, tmp_path / "corrupt")
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert main(["convert", str(corrupt), str(tmp_path / "y"), "--to", "hf"]) == 2
    assert "corrupt weights file" in capsys.readouterr().err

    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_kv_heads"] = 4
    (folder / "config.json").write_text(json.dumps(cfg))
    assert main(["model", "info", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "layers.0.attention.wk.weight" in err and "(16, 64)" in err

    assert main(["model", "info", "llama9-1t"]) == 2
    assert "neither a preset" in capsys.readouterr().err


def test_model_info_cli_prints_405b(capsys):
    assert main(["model", "info", "llama3.1-405b", "--seq-len", "8192"]) == 0
    out = capsys.readouterr().out
    assert "405,853,388,800" in out and "53248" in out and "GiB" in out


def long_context_config() -> ModelConfig:
    """Llama 3.2 1B's rotary setup (head 64, theta 500k, factor 32) at its full 128K context."""
    return small_config(dim=128, n_heads=2, n_kv_heads=1, rope_scaling=RopeScaling(factor=32.0), max_seq_len=131_072)


def test_rope_stays_fp32_in_bf16_models(tmp_path):
    config = long_context_config()
    reference = pm.build(config, seed=7)
    positions = torch.arange(config.max_seq_len)[None]
    cos, sin = reference.rope_angles(positions)
    checkpoint = _save(reference, tmp_path / "ckpt")
    bf16_models = {
        "build": pm.build(config, dtype=torch.bfloat16, seed=7),
        "load preset": pm.load("tiny", dtype=torch.bfloat16)[0],
        "load checkpoint": pm.load(checkpoint, dtype=torch.bfloat16)[0],
        ".to(bfloat16)": pm.build(config, seed=7).to(torch.bfloat16),
        ".half()": pm.build(config, seed=7).half(),
        "meta, then .to(bfloat16)": pm.build(config, device="meta").to(torch.bfloat16),
    }
    for how, model in bf16_models.items():
        assert model.inv_freq.dtype == torch.float32, how
        assert model.layers[0].attention.wq.weight.dtype != torch.float32, how
    bf16 = bf16_models["build"]
    assert torch.equal(bf16.inv_freq, reference.inv_freq)
    bf16_cos, bf16_sin = bf16.rope_angles(positions)
    assert torch.equal(bf16_cos, cos) and torch.equal(bf16_sin, sin)
    meta = bf16_models["meta, then .to(bfloat16)"]
    meta.to_empty(device="cpu")
    meta.init_weights()
    assert torch.equal(meta.inv_freq, reference.inv_freq)


def test_bf16_logits_at_long_positions_match_fp32_rope():
    """A bf16 model whose last tokens sit 128K positions after its first, against the same
    (bf16-rounded) weights run in fp32: only bf16 matmul noise apart (0.5%). Attention sees
    relative angles, so bf16 frequencies show only across long distances: 13% here."""
    config = long_context_config()
    model = pm.build(config, seed=8).eval()
    with torch.no_grad():  # sharper attention than at init, so that rotations matter
        for layer in model.layers:
            layer.attention.wq.weight.mul_(4)
            layer.attention.wk.weight.mul_(4)
    bf16 = model.to(torch.bfloat16)
    reference = pm.build(config).eval()
    reference.load_state_dict({k: v.float() for k, v in bf16.state_dict().items()})
    tokens = torch.randint(0, config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    end = config.max_seq_len
    positions = torch.cat([torch.arange(32), torch.arange(end - 32, end)]).expand(2, 64)
    with torch.no_grad():
        assert rel_err(bf16(tokens, positions=positions), reference(tokens, positions=positions)) < 0.02

"""Checks that need CUDA; they skip cleanly elsewhere (CI has no GPU).

Run on a GPU machine with `python -m pytest -q tests/test_gpu.py`.
"""

import pytest
import torch
from token_data import write_progressions

from pasture import model as pm
from pasture.model.config import RopeScaling
from pasture.train.loss import cross_entropy_sum

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def small_config():
    return pm.ModelConfig(dim=256, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=1024, multiple_of=64,
                          rope_scaling=RopeScaling(original_max_position_embeddings=128), max_seq_len=1024)


def test_compiled_flex_attention_equals_masked_sdpa_on_cuda():
    torch.manual_seed(0)
    config = small_config()
    flex = pm.build(config, device="cuda", seed=1, attention_backend="flex").eval()
    sdpa = pm.build(config, device="cuda", seed=1, attention_backend="sdpa").eval()
    tokens = torch.randint(0, config.vocab_size, (2, 512), device="cuda")
    doc_ids = torch.cat([torch.zeros(2, 200), torch.ones(2, 312)], dim=1).long().cuda()
    with torch.no_grad():
        torch.testing.assert_close(flex(tokens, doc_ids), sdpa(tokens, doc_ids), rtol=1e-4, atol=1e-4)


def test_bf16_autocast_step_matches_fp32_loss_and_uses_fused_adamw():
    from pasture.train.schedule import OptimConfig, build_optimizer

    torch.manual_seed(0)
    config = small_config()
    model = pm.build(config, device="cuda", seed=2)
    optimizer = build_optimizer(model, OptimConfig())
    assert optimizer.defaults["fused"]
    tokens = torch.randint(0, config.vocab_size, (4, 256), device="cuda")
    with torch.no_grad():
        fp32 = cross_entropy_sum(model(tokens, return_hidden=True), model.output.weight, tokens).item()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = cross_entropy_sum(model(tokens, return_hidden=True), model.output.weight, tokens)
    assert loss.item() == pytest.approx(fp32, rel=2e-2)
    loss.backward()
    optimizer.step()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights


def test_engine_on_cuda_equals_full_forward():
    """Compiled decode with CUDA graphs (padded rows and keys) against cache-free forwards; a second
    and a third engine in the same process (each decodes on its own thread) give the same tokens."""
    from pasture.serve import Engine, SamplingParams

    model = pm.build(small_config(), device="cuda", seed=3).eval()
    prompts = [list(range(1, 20)), list(range(5, 9)), [7]]
    expected = []
    with torch.no_grad():
        for prompt in prompts:
            ids = list(prompt)
            for _ in range(24):
                ids.append(int(model(torch.tensor([ids], device="cuda"))[0, -1].argmax()))
            expected.append(ids[len(prompt):])
    for options in ({}, {"max_batch_size": 2}, {"compile": False}):
        with Engine(model, **{"max_batch_size": 4, **options}) as engine:
            got = [r.token_ids for r in engine.generate(prompts, SamplingParams(max_tokens=24, temperature=0))]
            assert engine.cuda_graphs
        assert got == expected, options


def test_fp8_recipe_on_cuda_keeps_logits_close_and_serves():
    """Llama 3's FP8 inference recipe: inner FFN layers in float8 with row-wise scales; the rest bf16."""
    from pasture.serve import Engine, SamplingParams
    from pasture.serve.quantize import fp8_layer_names, quantize

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 matmuls need an Ada or Hopper GPU")
    config = small_config().replace(n_layers=4)
    model = pm.build(config, device="cuda", dtype=torch.bfloat16, seed=4).eval()
    tokens = torch.randint(0, config.vocab_size, (2, 64), device="cuda")
    with torch.no_grad():
        bf16 = model(tokens)
        quantize(model, "fp8")
        fp8 = model(tokens)
    chosen = fp8_layer_names(model)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            plain_bf16 = type(module.weight.data) is torch.Tensor and module.weight.dtype == torch.bfloat16
            assert plain_bf16 == (name not in chosen), name  # torchao's float8 weights are a tensor subclass
    assert ((fp8 - bf16).norm() / bf16.norm()).item() < 0.05
    with Engine(model, max_batch_size=2) as engine:
        assert len(engine.generate([[1, 2, 3], [4]], SamplingParams(temperature=0, max_tokens=8))[1].token_ids) == 8


def test_flex_attention_gradients_equal_masked_sdpa_on_cuda():
    """The training path on GPUs (compiled FlexAttention's backward) against SDPA's."""
    config = small_config()
    tokens = torch.randint(0, config.vocab_size, (2, 256), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    doc_ids = torch.cat([torch.zeros(2, 100), torch.ones(2, 156)], dim=1).long().cuda()
    grads = []
    for backend in ("flex", "sdpa"):
        model = pm.build(config, device="cuda", seed=5, attention_backend=backend)
        cross_entropy_sum(model(tokens, doc_ids, return_hidden=True), model.output.weight, tokens).backward()
        grads.append(model.layers[0].attention.wq.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-4)


def test_pretrain_on_cuda_with_compile_bf16_flex_and_mfu(tmp_path):
    """The whole GPU training path end to end: autocast bf16, compiled blocks, FlexAttention
    with the document mask, fused AdamW; the loss falls and MFU is logged."""
    from pasture.train import pretrain as pt
    from pasture.train.recipe import load_recipe, parse_recipe
    from pasture.train.metrics import read_metrics

    data = write_progressions(tmp_path / "tokens", 512, 400, 20, 200)
    raw = load_recipe("tiny", [
        f"data.train=[\"{data}\"]", f"log.dir=\"{tmp_path / 'run'}\"", "log.progress=false", "log.tensorboard=false",
        "log.every=1", "train.seq_len=256", "train.batch_size=8", "train.batch_ramp=[]", "train.steps=30",
        "train.anneal_steps=0", "train.compile=true", "optim.lr=0.003", "optim.warmup_steps=3", "eval.every=0",
        "eval.batches=2", "checkpoint.every=100", "checkpoint.anneal_every=0", "model.vocab_size=512"])
    pt.pretrain(parse_recipe(raw), raw, log=lambda *_: None)
    records = read_metrics(tmp_path / "run", "train")
    losses = [r["loss"] for r in records]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:3]) / 3
    if any(r.get("mfu") for r in records):  # known GPUs only (H100, A100, ...)
        assert 0 < records[-1]["mfu"] < 1

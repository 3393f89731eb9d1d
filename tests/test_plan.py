"""`pasture plan`: the memory and FLOP arithmetic, and the command on the shipped recipes."""

import pytest

from pasture.cli import main
from pasture.model.config import preset
from pasture.model.info import num_params
from pasture.train import plan
from pasture.train.parallel import Layout, ParallelConfig

LLAMA_8B = preset("llama3.1-8b")


def test_block_and_stage_parameters_add_up_to_the_model():
    config = LLAMA_8B
    assert plan.block_params(config) == 218_112_000  # 4096*128*(64+16) + 3*4096*14336 + 2*4096
    assert sum(plan.stage_params(config, 1)) == num_params(config) == 8_030_261_248
    assert sum(plan.stage_params(config, 4)) == num_params(config)
    first = plan.stage_params(config, 4)[0]  # 34 units (embedding, 32 blocks, output) over 4 stages
    assert first == 7 * plan.block_params(config) + 128256 * 4096


def test_weights_gradients_optimizer_are_16_bytes_per_param_over_the_shards():
    layout = Layout(dp_replicate=1, dp_shard=8, tp=1, cp=1, pp=1)
    mem = plan.memory_plan(LLAMA_8B, layout, ParallelConfig(), seq_len=8192, micro_batch_size=1, n_microbatches=1)
    n = num_params(LLAMA_8B)
    assert mem.weights == pytest.approx(4 * n / 8)
    assert mem.gradients == pytest.approx(4 * n / 8)
    assert mem.optimizer == pytest.approx(8 * n / 8)
    # two blocks gathered in bf16 plus the embedding and output projection
    assert mem.gathered_weights == pytest.approx(2 * (2 * plan.block_params(LLAMA_8B) + 128256 * 4096))
    hsdp = plan.memory_plan(LLAMA_8B, Layout(2, 4, 1, 1, 1), ParallelConfig(), 8192, 1, 1)
    assert hsdp.weights == pytest.approx(4 * n / 4)  # replicas do not divide the weights


def test_float8_changes_only_the_weights_for_compute():
    n_blocks, linears = 32, plan.block_params(LLAMA_8B) - 2 * 4096
    args = (ParallelConfig(), 8192, 1, 1)
    fsdp = Layout(dp_replicate=1, dp_shard=8, tp=1, cp=1, pp=1)
    bf16 = plan.memory_plan(LLAMA_8B, fsdp, *args)
    tensorwise = plan.memory_plan(LLAMA_8B, fsdp, *args, float8="tensorwise")
    rowwise = plan.memory_plan(LLAMA_8B, fsdp, *args, float8="rowwise")
    # tensorwise all-gathers the two in-flight blocks' linears in float8: 1 byte per weight, not 2
    assert bf16.gathered_weights - tensorwise.gathered_weights == pytest.approx(2 * linears)
    assert rowwise.gathered_weights == pytest.approx(bf16.gathered_weights)
    assert tensorwise.activations == bf16.activations and tensorwise.weights == bf16.weights
    # one GPU: no autocast copy of the blocks' linears, only of the output projection
    one = Layout(1, 1, 1, 1, 1)
    single = plan.memory_plan(LLAMA_8B, one, *args, float8="rowwise")
    assert single.gathered_weights == pytest.approx(
        plan.memory_plan(LLAMA_8B, one, *args).gathered_weights - 2 * n_blocks * linears)
    assert single.gathered_weights == pytest.approx(2 * (n_blocks * 2 * 4096 + 4096))  # norms' gains


def test_tensor_and_pipeline_parallel_divide_the_weights():
    layout = Layout(dp_replicate=1, dp_shard=2, tp=2, cp=1, pp=2)
    mem = plan.memory_plan(LLAMA_8B, layout, ParallelConfig(pp=2), 8192, 1, 4)
    biggest_stage = max(plan.stage_params(LLAMA_8B, 2))  # embedding + 16 blocks, or 16 blocks + output
    assert mem.params_per_gpu == pytest.approx(biggest_stage / (2 * 2))  # / tp / dp_shard
    assert mem.weights == pytest.approx(4 * biggest_stage / (2 * 2))


def test_activation_bytes_per_token_follow_the_saved_tensors():
    dim, kv, ffn = 4096, 1024, 14336
    lse = 4 * 32
    assert plan.activation_bytes_per_token(LLAMA_8B) == 20 * dim + 4 * kv + 8 * ffn + lse  # 200,704 + 128
    assert plan.activation_bytes_per_token(LLAMA_8B, fp32_residual=True) == 24 * dim + 4 * kv + 8 * ffn + lse
    assert plan.activation_bytes_per_token(LLAMA_8B, mode="full") == 2 * dim
    assert plan.activation_bytes_per_token(LLAMA_8B, tp=8) == (16 * dim + 4 * kv + 8 * ffn) / 8 + 4 * dim + lse / 8
    assert plan.activation_bytes_per_token(LLAMA_8B, mode="op") == 10 * dim + 4 * kv + 4 * ffn + 2 * dim + lse
    layout = Layout(1, 8, 1, 1, 1)
    mem = plan.memory_plan(LLAMA_8B, layout, ParallelConfig(), 8192, 1, 1)
    per_block = plan.activation_bytes_per_token(LLAMA_8B)
    assert mem.activations_none == pytest.approx(8192 * 32 * per_block + 8 * dim * 8192)
    assert mem.activations_full == pytest.approx(8192 * (32 * 2 * dim + per_block) + 8 * dim * 8192)
    # 8 bytes per logit of one chunk, the output weight's fp32 gradient (FSDP: its weight is bf16 already)
    assert mem.loss == pytest.approx(8 * 128256 * 8192 + 4 * 128256 * dim)
    one = plan.memory_plan(LLAMA_8B, Layout(1, 1, 1, 1, 1), ParallelConfig(), 8192, 1, 1)
    assert one.loss == pytest.approx(8 * 128256 * 8192 + 6 * 128256 * dim)  # + the bf16 cast of the weight
    tp = plan.memory_plan(LLAMA_8B, Layout(1, 1, 2, 1, 1), ParallelConfig(tp=2), 8192, 1, 1)
    assert tp.loss == pytest.approx(one.loss / 2)  # each rank holds half the vocabulary


@pytest.mark.parametrize("weights", ["fp32 + autocast", "bf16"])
def test_activation_model_matches_the_tensors_saved_for_backward(weights):
    """The activation terms against what autograd really keeps (saved-tensor hooks, CPU bf16):
    blocks, final norm and the loss's hidden-state gradient. Weights and their casts are
    left out (they are the plan's other terms)."""
    import torch

    from pasture.model.llama import Transformer
    from pasture.train.loss import cross_entropy_sum

    config = LLAMA_8B.replace(dim=256, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=1000, ffn_dim=768)
    torch.manual_seed(0)
    model = Transformer(config)
    fp32_residual = weights != "bf16"
    if not fp32_residual:
        model.to(torch.bfloat16)  # FSDP's mixed precision hands the blocks bf16 weights
    batch, seq = 2, 200
    tokens = torch.randint(0, config.vocab_size, (batch, seq + 1))
    weight_like = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape[::-1]) for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if tuple(t.shape) not in weight_like and not isinstance(t, torch.nn.Parameter):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=fp32_residual):
        hidden = model(tokens[:, :-1], return_hidden=True)
        cross_entropy_sum(hidden, model.output.weight, tokens[:, 1:])
    measured = sum(saved.values()) / (batch * seq)
    final_norm = (10 if fp32_residual else 8) * config.dim
    predicted = config.n_layers * plan.activation_bytes_per_token(config, fp32_residual=fp32_residual) + final_norm
    assert measured == pytest.approx(predicted, rel=0.03)
    mem = plan.memory_plan(config, Layout(1, 1 if fp32_residual else 2, 1, 1, 1), ParallelConfig(), seq, batch, 1)
    assert mem.activations_none == pytest.approx(predicted * batch * seq)


def test_pipeline_schedules_keep_different_numbers_of_micro_batches():
    layout = Layout(1, 1, 1, 1, 4)
    assert plan.microbatches_in_flight(ParallelConfig(pp_schedule="1F1B"), layout, 8) == 4
    assert plan.microbatches_in_flight(ParallelConfig(pp_schedule="GPipe"), layout, 8) == 8
    assert plan.microbatches_in_flight(ParallelConfig(pp_schedule="Interleaved1F1B"), layout, 8) == 4 * (1 + 3 / 8)


def test_plan_command_on_shipped_recipes(capsys):
    assert main(["plan", "8b", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "8,030,261,248" in out and "dp_shard 8" in out and "5.791e+10" in out
    assert "fits" in out and "weights fp32                     3.74 GiB" in out

    assert main(["plan", "405b", "--gpus", "16384"]) == 0
    out = capsys.readouterr().out
    assert "405,853,388,800" in out
    assert "dp_shard 128 x tp 8 x cp 1 x pp 16 = 16384 GPUs" in out
    assert "Interleaved1F1B, 32 stages" in out and "fits on every stage" in out

    assert main(["plan", "405b", "parallel.activation_checkpoint=\"none\"", "--gpus", "16384"]) == 0
    assert "does NOT fit" in capsys.readouterr().out


def test_plan_rejects_layouts_that_cannot_run(capsys):
    assert main(["plan", "405b", "--gpus", "1000"]) == 2
    assert "not divisible by dp_replicate*tp*cp*pp = 128" in capsys.readouterr().err
    assert main(["plan", "8b"]) == 2
    assert "give --gpus N" in capsys.readouterr().err
    assert main(["plan", "70b", "parallel.tp=16", "--gpus", "256"]) == 2
    assert "does not divide model.n_kv_heads=8" in capsys.readouterr().err



def test_long_context_recipe_fits_with_context_parallel(capsys):
    assert main(["plan", "405b-long", "--gpus", "16384"]) == 0
    out = capsys.readouterr().out
    assert "dp_shard 8 x tp 8 x cp 16 x pp 16 = 16384 GPUs" in out
    assert "sequence length 131,072" in out and "fits on every stage" in out

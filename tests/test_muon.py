"""optim.optimizer=muon: Muon for the blocks' matrices, AdamW for the rest, one checkpointable optimizer."""

import shutil

import numpy as np
import torch
from token_data import write_progressions

from pasture.model import build
from pasture.model.config import preset
from pasture.train import checkpoint as ckpt
from pasture.train.metrics import read_metrics
from pasture.train.pretrain import pretrain
from pasture.train.recipe import load_recipe, parse_recipe
from pasture.train.schedule import MuonWithAdamW, OptimConfig, build_optimizer


def test_muon_takes_block_matrices_and_steps_them_as_torch_muon():
    torch.manual_seed(0)
    model = build(preset("tiny").replace(vocab_size=64, dim=64, n_layers=2, n_heads=2, n_kv_heads=1))
    opt = build_optimizer(model, OptimConfig(lr=0.02, optimizer="muon"))
    assert isinstance(opt, MuonWithAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    assert muon_names == {n for n, p in model.named_parameters() if p.ndim == 2 and n.startswith("layers.")}
    adamw_names = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert "tok_embeddings.weight" in adamw_names and not adamw_names & muon_names
    # one step moves a block matrix exactly as torch.optim.Muon alone would
    weight = model.layers[0].attention.wq.weight
    reference = weight.detach().clone().requires_grad_()
    grad = torch.randn_like(weight)
    weight.grad, reference.grad = grad.clone(), grad.clone()
    opt.step()
    torch.optim.Muon([reference], lr=0.02, weight_decay=0.1, momentum=0.95, adjust_lr_fn="match_rms_adamw").step()
    torch.testing.assert_close(weight.detach(), reference.detach())
    for group in opt.param_groups:  # the schedule's lr reaches both inner optimizers
        group["lr"] = 0.5
    assert all(g["lr"] == 0.5 for g in opt.muon.param_groups + opt.adamw.param_groups)


def test_muon_run_learns_and_resumes_bit_exactly(tmp_path):
    data = write_progressions(tmp_path / "tokens", 128, 200, 20, 120)

    def run(run_dir, *extra):
        raw = load_recipe("tiny", [f'data.train=["{data}"]', f'log.dir="{run_dir}"', "log.progress=false",
                                   "log.tensorboard=false", "train.seq_len=64", "train.batch_size=4",
                                   "train.batch_ramp=[]", "train.threads=1", "train.anneal_steps=0", "train.steps=16",
                                   "optim.lr=0.01", "optim.warmup_steps=2", 'optim.optimizer="muon"', "eval.every=0",
                                   "eval.batches=2", "checkpoint.every=8", "checkpoint.keep_last=3",
                                   "checkpoint.anneal_every=0", "model.dim=64", "model.n_layers=2", "model.n_heads=2",
                                   "model.n_kv_heads=1", "log.every=1", *extra])
        return pretrain(parse_recipe(raw), raw, log=lambda *_: None)

    run(tmp_path / "straight")
    losses = [r["loss"] for r in read_metrics(tmp_path / "straight", "train")]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(dict(ckpt.list_checkpoints(tmp_path / "resumed"))[16])
    run(tmp_path / "resumed", 'resume="auto"')
    assert [r["loss"] for r in read_metrics(tmp_path / "resumed", "train")] == losses

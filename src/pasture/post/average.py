"""`pasture average MODEL... --out DIR`: a model soup, the mean of the weights of runs at the
same stage (Llama 3 averages the models of each round's runs over data and hyperparameters).

Models are read one at a time and summed in float64, so memory holds two models, not N.
Models whose architectures differ are refused, naming the first tensor that differs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pasture.errors import PastureError
from pasture.model import save
from pasture.post.models import load_encoder, load_model, save_encoder
from pasture.post.reward_model import read_head, save_head


class ArchitectureMismatch(PastureError):
    """Models that cannot be averaged: different tensors or shapes."""


def first_difference(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> str | None:
    """The first tensor (in `reference`'s order) whose name or shape differs, described; None if none."""
    for name, tensor in reference.items():
        if name not in other:
            return f"{name} is missing"
        if tuple(other[name].shape) != tuple(tensor.shape):
            return f"{name} has shape {tuple(other[name].shape)}, not {tuple(tensor.shape)}"
    extra = next((name for name in other if name not in reference), None)
    return f"{extra} is extra" if extra else None


def _config_difference(a, b) -> str | None:
    da, db = a.to_dict(), b.to_dict()
    return next((f"config {k} is {db.get(k)!r}, not {v!r}" for k, v in da.items() if db.get(k) != v), None)


def average_models(specs: list[str], out: str | Path, log=print) -> Path:
    """Average the weights of `specs` into the pasture checkpoint folder `out`."""
    if len(specs) < 2:
        raise PastureError("average needs at least two models")
    model, config = load_model(specs[0])
    reference = model.state_dict()
    sums = {name: t.double().clone() for name, t in reference.items()}
    heads = [head for head in map(read_head, specs) if head is not None]
    for spec in specs[1:]:
        other_model, other_config = load_model(spec)
        other = other_model.state_dict()
        problem = first_difference(reference, other) or _config_difference(config, other_config)
        if problem:
            raise ArchitectureMismatch(f"cannot average {specs[0]} and {spec}: in {spec}, {problem}")
        for name, tensor in other.items():
            sums[name] += tensor.double()
        del other_model, other
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_(sums[name] / len(specs))
    out = save(model, out)
    if heads:
        if len(heads) != len(specs):
            raise ArchitectureMismatch("some models have a reward head and some do not")
        save_head(sum(h.double() for h in heads) / len(heads), out)
    try:
        save_encoder(load_encoder(specs[0]), out)
    except PastureError as e:  # a preset without a tokenizer: the weights alone are still a model
        log(f"note: no tokenizer copied ({e})")
    log(f"averaged {len(specs)} models into {out}")
    return Path(out)

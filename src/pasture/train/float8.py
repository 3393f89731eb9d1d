"""Float8 training (`train.float8`): torchao's Float8Linear in place of the blocks' linears.

On GPUs with float8 tensor cores (compute capability 8.9+: H100, L4, RTX 4090) the
matmuls of the transformer blocks run in float8 with dynamic scales, recomputed every
step from the tensors themselves (`tensorwise`: one scale per tensor, fastest;
`rowwise`: one per row, more accurate). Like the parallel plans, the conversion swaps
modules from outside the model, so the model code stays plain torch; and Float8Linear
keeps its `weight` in high precision and casts only inside the matmul, so checkpoints
hold the same tensors under the same names as without float8.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pasture.errors import PastureError

FLOAT8_RECIPES = ("none", "tensorwise", "rowwise")


def _torchao_float8():
    try:
        import torchao.float8 as float8
    except ImportError:
        raise PastureError(
            "train.float8 needs torchao: pip install 'pasture[float8]' (or pip install torchao)") from None
    return float8


def check_recipe_name(name: str) -> None:
    if name not in FLOAT8_RECIPES:
        raise PastureError(f"train.float8 must be one of {', '.join(FLOAT8_RECIPES)}, got {name!r}")


def check_available(device: torch.device) -> None:
    """Fail before any work without torchao, or where float8 matmuls cannot run (CPU runs
    them, slowly, which tests use)."""
    _torchao_float8()
    if device.type == "cuda" and (capability := torch.cuda.get_device_capability(device)) < (8, 9):
        raise PastureError(
            f"train.float8 needs a GPU with float8 matmuls (compute capability 8.9+, e.g. H100); "
            f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}; set train.float8=none")


def fsdp_float8_all_gather(recipe_name: str, fsdp: bool) -> bool:
    """Whether FSDP all-gathers the weights in float8 (torchao does it for tensorwise scales only)."""
    return fsdp and recipe_name == "tensorwise"


def apply_float8(model: nn.Module, recipe_name: str, *, fsdp: bool = False) -> list[str]:
    """Swap the transformer blocks' nn.Linear for torchao Float8Linear in place; the names swapped.

    Call it on the whole model before tensor parallelism, activation checkpointing,
    compile and FSDP (the torchtitan order); it works on a `meta` model. Left as
    nn.Linear: the output projection, because the vocabulary head's logits feed the
    softmax directly and float8 rounding there costs accuracy for little speed (torchtitan
    keeps it in bf16, as Llama 3's FP8 inference keeps the ends of the network); and any
    linear whose in or out features are not a multiple of 16, which `torch._scaled_mm`
    requires. With `fsdp` and the tensorwise recipe, FSDP all-gathers weights already cast
    to float8 (half the bytes of bf16); call `precompute_fsdp_scales` after each optimizer
    step then.
    """
    check_recipe_name(recipe_name)
    if recipe_name == "none":
        return []
    float8 = _torchao_float8()
    config = float8.Float8LinearConfig.from_recipe_name(recipe_name)
    if fsdp_float8_all_gather(recipe_name, fsdp):
        config = dataclasses.replace(config, enable_fsdp_float8_all_gather=True)
    swapped = []

    def in_blocks_and_aligned(module: nn.Module, name: str) -> bool:
        keep = name.startswith("layers.") and module.in_features % 16 == 0 and module.out_features % 16 == 0
        if keep:
            swapped.append(name)
        return keep

    float8.convert_to_float8_training(model, config=config, module_filter_fn=in_blocks_and_aligned)
    return swapped


def precompute_fsdp_scales(model: nn.Module) -> None:
    """Compute every float8-all-gathered weight's scale in one all-reduce, after the
    weights change (optimizer step, averaging), instead of one all-reduce per weight at
    its next all-gather."""
    _torchao_float8().precompute_float8_dynamic_scale_for_fsdp(model)

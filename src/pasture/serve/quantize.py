"""Quantized inference: int8 weight-only on CPU, Llama 3's FP8 recipe on GPU; and fp32
weights repacked for oneDNN on CPU.

Decode reads every weight once per step, so it is memory-bound: int8 weights read a
quarter of fp32's bytes. `Int8Linear` keeps one symmetric scale per output row, converts the
int8 weight to the activations' dtype just before its matmul and scales the output rows:
on this project's CPUs (AVX2) that is 2.6x faster than `torch.ops.aten._weight_int8pack_mm`
for one row and 34x for 32, whose time grows with every row (RESULTS.md, session 10). In a
compiled decode step one row is a row dot product instead, the conversion fused into one pass
over the int8 bytes: 1.69x the compiled fp32 engine on an AVX-512 host (session 12).
benchmarks/decode_throughput.py measures both against torchao's int8 weight-only config.

`pack_for_cpu` keeps fp32 and only changes the kernel: MKL's fp32 GEMV, which `nn.Linear`
calls, reads weights at 6-8 GB/s on this project's CPUs (AMD EPYC, AVX2) against 18 GB/s of
memory bandwidth, and at batch 8-32 its skinny GEMMs are slower still (the [32, 576] x
[576, 49152] output head runs at a third of the matmul peak); oneDNN on the same weights,
reordered once into its blocked layout for the engine's batch size, runs 1.4-2.5x faster there
(RESULTS.md, session 9). `rows_for_compiled_cpu` is the other way, for an engine whose decode
step is compiled: a one-row linear becomes row dot products that inductor turns into one
vectorised loop streaming the weights, faster still at batch 1; with more rows it keeps a
oneDNN copy too.

FP8 follows the Llama 3 paper (§6.2): only the feed-forward layers, row-wise scales for
weights and activations, each activation row's max clamped at 1200 before its scale is
taken, the first and last transformer blocks left in bf16 (torchao, H100-class GPUs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pasture.model.llama import Transformer

QUANTIZATIONS = ("none", "int8", "fp8")
FP8_ACTIVATION_MAX = 1200.0


class Int8Linear(nn.Module):
    """A bias-free linear layer with int8 weights [out, in] and an fp scale per output row."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-128, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(weight.dtype))
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != self.scale.dtype:
            flat = flat.to(self.scale.dtype)
        if flat.shape[0] == 1 and torch.compiler.is_compiling():
            # one row in a compiled step: the conversion fused into one vectorised pass over the int8 bytes,
            # where `F.linear` would first write and read back an fp32 copy of the weight
            out = row_dot(flat, self.weight) * self.scale
        else:
            out = F.linear(flat, self.weight.to(flat.dtype)) * self.scale
        return out.view(*x.shape[:-1], self.out_features)

    def dequantize(self) -> torch.Tensor:
        return self.weight.float() * self.scale.float()[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


# oneDNN's fp32 linear on a weight it reordered once, as an op of pasture's own so a compiled step
# can call it: inductor lowers `mkldnn._linear_pointwise` only on weights it froze itself. Defined
# with the plain library API, which adds ~4 us a call where `torch.library.custom_op` adds ~30.
_LIBRARY = torch.library.Library("pasture", "DEF")
_LIBRARY.define("onednn_linear(Tensor x, Tensor packed, int out_features) -> Tensor")
_LIBRARY.impl("onednn_linear", lambda x, packed, out_features: torch.ops.mkldnn._linear_pointwise(
    x, packed, None, "none", [], ""), "CompositeExplicitAutograd")


@torch.library.register_fake("pasture::onednn_linear")
def _(x: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


onednn_linear = torch.ops.pasture.onednn_linear


def row_dot(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One input row [..., in] against every weight row [out, in], for inductor to fuse into one pass over the
    weights (converted to x's dtype inside the same pass when they are int8)."""
    return (x.unsqueeze(-2) * weight.to(x.dtype)).sum(-1)


def onednn_pack(weight: torch.Tensor, batch_hint: int) -> torch.Tensor:
    """`weight` [out, in] in oneDNN's blocked layout for about `batch_hint` input rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().float().contiguous(), batch_hint)


class PackedLinear(nn.Module):
    """A bias-free fp32 linear layer whose weight oneDNN reordered once into its blocked layout."""

    def __init__(self, weight: torch.Tensor, batch_hint: int = 1) -> None:
        super().__init__()
        self.packed = onednn_pack(weight, batch_hint)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_linear(x, self.packed, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp32 packed for oneDNN"


class RowDotLinear(nn.Module):
    """A bias-free fp32 linear layer that, inside a compiled step, computes one input row as dot
    products with the weight's rows, `(x * W).sum(-1)`: inductor fuses that into one pass over the
    weights. Eagerly (a prefill) the product would be an [out, in] temporary, so there, and for
    more rows, it is oneDNN on a packed copy (`batch_hint` > 1: twice the weights' memory, for
    1.4-2.5x faster batched steps) or else `F.linear`."""

    def __init__(self, weight: torch.Tensor, batch_hint: int = 1) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach())
        self.packed = onednn_pack(weight, batch_hint) if batch_hint > 1 else None
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[:-1].numel() == 1 and torch.compiler.is_compiling():
            return row_dot(x, self.weight)
        if self.packed is not None:
            return onednn_linear(x, self.packed, self.out_features)
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        more = "oneDNN" if self.packed is not None else "F.linear"
        return f"in_features={self.in_features}, out_features={self.out_features}, row dot products at batch 1, " \
               f"{more} otherwise"


def pack_for_cpu(model: Transformer, batch_hint: int = 1) -> Transformer:
    """Serve-only: every fp32 linear layer a decode step reads becomes a `PackedLinear` laid out
    for `batch_hint` rows (the engine's max batch size; same numbers to float rounding); the
    weights stop being parameters, so the model no longer trains."""
    if not torch.backends.mkldnn.is_available():
        return model
    return _replace_cpu_fp32_linears(model, lambda w: PackedLinear(w, batch_hint))


def rows_for_compiled_cpu(model: Transformer, batch_hint: int = 1) -> Transformer:
    """Serve-only, for an engine that compiles its decode step on CPU: every fp32 linear layer a
    decode step reads becomes a `RowDotLinear` (same numbers to float rounding), with a oneDNN copy
    for batches when `batch_hint` (the engine's max batch size) is above 1 and oneDNN is there."""
    if not torch.backends.mkldnn.is_available():
        batch_hint = 1
    return _replace_cpu_fp32_linears(model, lambda w: RowDotLinear(w, batch_hint))


def _replace_cpu_fp32_linears(model: Transformer, make: Callable[[torch.Tensor], nn.Module]) -> Transformer:
    for parent, name in _linear_layers(model):
        layer = getattr(parent, name)
        if isinstance(layer, nn.Linear) and layer.bias is None and layer.weight.dtype == torch.float32 \
                and layer.weight.device.type == "cpu":
            setattr(parent, name, make(layer.weight))
    return model


def _linear_layers(model: Transformer) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every linear layer a decode step reads: the blocks' and the output head."""
    found = [(model, "output")]
    for block in model.layers:
        found += [(block.attention, n) for n in ("wq", "wk", "wv", "wo")]
        found += [(block.feed_forward, n) for n in ("w1", "w2", "w3")]
    return found


def quantize_int8(model: Transformer) -> Transformer:
    """Replace every linear layer (output head included, untied from the embedding) with `Int8Linear`."""
    for parent, name in _linear_layers(model):
        setattr(parent, name, Int8Linear(getattr(parent, name).weight))
    return model


def quantize_int8_torchao(model: Transformer) -> Transformer:
    """torchao's int8 weight-only quantization of the same layers (the benchmark's comparison)."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    if model.config.tie_embeddings:  # quantizing the head must not touch the embedding it shares
        model.output.weight = nn.Parameter(model.output.weight.detach().clone())
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
    return model


def fp8_layer_names(model: Transformer) -> set[str]:
    """Linear layers Llama 3's FP8 recipe quantizes: the feed-forward ones, first and last blocks excepted."""
    inner = range(1, len(model.layers) - 1)
    return {f"layers.{i}.feed_forward.{w}" for i in inner for w in ("w1", "w2", "w3")}


def quantize_fp8(model: Transformer) -> Transformer:
    """Llama 3's FP8 recipe (module docstring) with torchao; needs a CUDA GPU with FP8 matmuls."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), activation_value_ub=FP8_ACTIVATION_MAX)
    chosen = fp8_layer_names(model)
    quantize_(model, config, filter_fn=lambda module, fqn: fqn in chosen)
    return model


def quantize(model: Transformer, method: str) -> Transformer:
    """`none`, `int8` (CPU weight-only) or `fp8` (GPU, Llama 3 recipe); returns the same model, changed."""
    if method not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {method!r}; choose one of {', '.join(QUANTIZATIONS)}")
    if method == "int8":
        return quantize_int8(model)
    if method == "fp8":
        if model.tok_embeddings.weight.device.type != "cuda":
            raise ValueError("fp8 quantization needs a CUDA GPU with FP8 matmuls (H100-class); use int8 on CPU")
        return quantize_fp8(model)
    return model


@torch.inference_mode()
def perplexity(model: Transformer, tokens: torch.Tensor, window: int = 512, progress: str | None = None) -> float:
    """exp(mean next-token loss) over `tokens` [N], scored in disjoint windows of `window` tokens
    (with a progress bar named `progress`, if given)."""
    losses, count = 0.0, 0
    for start in tqdm(range(0, len(tokens) - 1, window), desc=progress, unit="window", disable=progress is None):
        chunk = tokens[start:start + window + 1]
        if len(chunk) < 2:
            break
        logits = model(chunk[None, :-1])[0]
        losses += F.cross_entropy(logits.float(), chunk[1:], reduction="sum").item()
        count += len(chunk) - 1
    return float(torch.exp(torch.tensor(losses / count)))

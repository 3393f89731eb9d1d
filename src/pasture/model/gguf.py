"""GGUF (llama.cpp's single-file format) in and out, for the llama architecture.

Reading dequantizes every tensor to float32 with the `gguf` library (F32, F16, BF16,
Q8_0, Q4_0, Q4_1, Q4_K, Q6_K and the other types it knows) and takes the shapes from the
metadata. Writing stores F32, F16, BF16 or Q8_0 weights (norms and the RoPE factors stay
F32, as llama.cpp wants) with the standard `llama.*` keys, so llama.cpp loads the file.

Two layout facts:
- llama.cpp's converter permutes the q/k rows of Hugging Face weights into Meta's
  interleaved rotary order; pasture keeps the half-split order, so reading applies
  `interleaved_to_half` and writing `half_to_interleaved` (with the KV head count for wk).
- Llama 3.1 frequency scaling is not a metadata key: the converter stores the per-frequency
  divisors as a `rope_freqs.weight` tensor. Reading recovers the scaling from it, writing
  stores it.

The tokenizer is stored as `tokenizer.*` metadata; this module writes whatever keys it is
given (`tokenizer_fields`) and leaves their meaning to `pasture.tokenizer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from tqdm import tqdm

from pasture.model.config import ModelConfig, RopeScaling
from pasture.model.convert import (
    CheckpointError,
    _ffn_fields,
    check_shapes,
    half_to_interleaved,
    interleaved_to_half,
    permute_qk,
)
from pasture.model.llama import rope_inverse_frequencies

ARCHITECTURE = "llama"
ROPE_FREQS = "rope_freqs.weight"
# what `--dtype` may ask for, and the GGML type each becomes
WRITE_TYPES = {
    "float32": gguf.GGMLQuantizationType.F32,
    "float16": gguf.GGMLQuantizationType.F16,
    "bfloat16": gguf.GGMLQuantizationType.BF16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}
_FILE_TYPES = {
    "float32": gguf.LlamaFileType.ALL_F32,
    "float16": gguf.LlamaFileType.MOSTLY_F16,
    "bfloat16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}

_TOP_NAMES = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
              "output.weight": "output.weight"}
_LAYER_NAMES = {
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "attn_norm.weight": "attention_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
}
_TO_GGUF_TOP = {v: k for k, v in _TOP_NAMES.items()}
_TO_GGUF_LAYER = {v: k for k, v in _LAYER_NAMES.items()}


def is_gguf(path: str | Path) -> bool:
    """A file that starts with the GGUF magic."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    """A memory-mapped reader, with a one-line error for anything that is not a GGUF file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"GGUF file {p} does not exist")
    if not is_gguf(p):
        raise CheckpointError(f"{p} is not a GGUF file (it does not start with 'GGUF')")
    try:
        return gguf.GGUFReader(p)
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{p}: damaged GGUF file: {e}") from None


def metadata_value(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    """The Python value of one metadata key (strings decoded, arrays as lists)."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


# ---------------------------------------------------------------- reading


def _pasture_name(gguf_name: str) -> str | None:
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    return None


def dequantize(tensor: gguf.ReaderTensor) -> np.ndarray:
    """A tensor's values as float32, in numpy order ([rows, columns] for a matrix)."""
    try:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise CheckpointError(
            f"tensor {tensor.name!r} is {tensor.tensor_type.name}, which the gguf library cannot dequantize"
        ) from None
    # a copy: F32 tensors come back as read-only views of the memory-mapped file
    return np.array(values, dtype=np.float32).reshape(tuple(reversed([int(n) for n in tensor.shape])))


def _rope_scaling_from_factors(factors: np.ndarray, config: ModelConfig) -> RopeScaling:
    """The Llama 3.1 scaling whose per-frequency divisors are `factors` (llama.cpp's rope_freqs)."""
    factor = float(factors.max())
    candidate = RopeScaling(factor=factor)  # low 1, high 4, original 8192: every Llama 3.1 / 3.2 model
    unscaled = rope_inverse_frequencies(config.replace(rope_scaling=None)).numpy()
    scaled = rope_inverse_frequencies(config.replace(rope_scaling=candidate)).numpy()
    if factors.shape != unscaled.shape or not np.allclose(unscaled / scaled, factors, rtol=1e-4):
        raise CheckpointError(
            "rope_freqs.weight is not Llama 3.1 frequency scaling (low_freq_factor 1, high_freq_factor 4, "
            "original context 8192); pasture cannot reproduce this RoPE"
        )
    return candidate


def _shortest_float32(value: float) -> float:
    """A float32 metadata value as the decimal that was written (9.99999975e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def config_from_gguf(reader: gguf.GGUFReader, tensor_shapes: dict[str, tuple[int, ...]]) -> ModelConfig:
    """The model's shape from `llama.*` metadata; tied embeddings when there is no output.weight."""
    arch = metadata_value(reader, "general.architecture")
    if arch != ARCHITECTURE:
        raise CheckpointError(f"GGUF architecture is {arch!r}; pasture reads only {ARCHITECTURE!r}")

    def key(name: str, default: Any = None) -> Any:
        value = metadata_value(reader, f"{ARCHITECTURE}.{name}", default)
        if value is None:
            raise CheckpointError(f"GGUF metadata lacks {ARCHITECTURE}.{name}")
        return value

    dim, n_heads = int(key("embedding_length")), int(key("attention.head_count"))
    n_kv_heads = key("attention.head_count_kv", n_heads)
    if isinstance(n_kv_heads, list):  # a per-layer list; pasture's layers are all alike
        if len(set(n_kv_heads)) != 1:
            raise CheckpointError(f"layers have different KV head counts {sorted(set(n_kv_heads))}")
        n_kv_heads = n_kv_heads[0]
    head_dim = dim // n_heads
    for name in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        value = metadata_value(reader, f"{ARCHITECTURE}.{name}")
        if value is not None and int(value) != head_dim:
            raise CheckpointError(f"{ARCHITECTURE}.{name} is {value}, not dim / heads = {head_dim}; not a Llama 3 layout")
    scaling_type = metadata_value(reader, f"{ARCHITECTURE}.rope.scaling.type", "none")
    if scaling_type not in ("none", "llama3"):
        raise CheckpointError(f"RoPE scaling type {scaling_type!r} is not supported (only Llama 3.1 scaling)")
    tokens = metadata_value(reader, "tokenizer.ggml.tokens")
    vocab = metadata_value(reader, f"{ARCHITECTURE}.vocab_size")
    if vocab is None:
        vocab = tensor_shapes["token_embd.weight"][0] if "token_embd.weight" in tensor_shapes else len(tokens or ())
    config = ModelConfig(
        dim=dim,
        n_layers=int(key("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(n_kv_heads),
        vocab_size=int(vocab),
        norm_eps=_shortest_float32(key("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(key("rope.freq_base", 10_000.0)),
        rope_scaling=None,
        max_seq_len=int(key("context_length", 8192)),
        tie_embeddings="output.weight" not in tensor_shapes,
        **_ffn_fields(dim, int(key("feed_forward_length"))),
    )
    return config


def read_gguf(path: str | Path, progress: bool = True) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Float32 weights in pasture names and row order, and the model config, from a llama GGUF."""
    reader = open_gguf(path)
    shapes = {t.name: tuple(reversed([int(n) for n in t.shape])) for t in reader.tensors}
    config = config_from_gguf(reader, shapes)
    state: dict[str, torch.Tensor] = {}
    rope_factors = None
    for tensor in tqdm(reader.tensors, desc=f"reading {Path(path).name}", unit="tensor", disable=not progress):
        if tensor.name == ROPE_FREQS:
            rope_factors = dequantize(tensor)
            continue
        name = _pasture_name(tensor.name)
        if name is None:
            raise CheckpointError(f"unexpected tensor {tensor.name!r} in a llama GGUF")
        state[name] = torch.from_numpy(dequantize(tensor))
    if rope_factors is not None:
        config = config.replace(rope_scaling=_rope_scaling_from_factors(rope_factors, config))
    state = permute_qk(state, config, interleaved_to_half)
    check_shapes(state, config)
    return state, config


# ---------------------------------------------------------------- writing


def _gguf_name(name: str) -> str:
    if name in _TO_GGUF_TOP:
        return _TO_GGUF_TOP[name]
    _, index, rest = name.split(".", 2)
    return f"blk.{index}.{_TO_GGUF_LAYER[rest]}"


def _encode_tensor(values: np.ndarray, dtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """Bytes (or typed values) for one tensor: vectors stay F32 (llama.cpp's norms are F32), and a
    matrix whose rows do not fill whole Q8_0 blocks falls back to F16."""
    qtype = WRITE_TYPES[dtype]
    if values.ndim == 1:
        return values.astype(np.float32), gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if values.shape[-1] % block:
        qtype = gguf.GGMLQuantizationType.F16
    if qtype == gguf.GGMLQuantizationType.F32:
        return values.astype(np.float32), qtype
    if qtype == gguf.GGMLQuantizationType.F16:
        return values.astype(np.float16), qtype
    return gguf.quants.quantize(values.astype(np.float32), qtype), qtype


def _add_metadata(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    """One metadata entry, typed from its Python value (ints as uint32, as llama.cpp's token ids are)."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        writer.add_array(key, list(value))
    else:
        raise TypeError(f"cannot store {type(value).__name__} as GGUF metadata ({key})")


def rope_factors(config: ModelConfig) -> np.ndarray:
    """llama.cpp's rope_freqs: the divisor of every rotary frequency under Llama 3.1 scaling."""
    unscaled = rope_inverse_frequencies(config.replace(rope_scaling=None))
    scaled = rope_inverse_frequencies(config)
    return (unscaled / scaled).numpy().astype(np.float32)


def write_gguf(
    state: dict[str, torch.Tensor],
    config: ModelConfig,
    path: str | Path,
    dtype: str = "float16",
    tokenizer_fields: dict[str, Any] | None = None,
    name: str = "pasture",
    progress: bool = True,
) -> Path:
    """Write pasture-layout weights as a llama GGUF that llama.cpp loads.

    dtype: float32, float16, bfloat16 or q8_0 for the matrices.
    tokenizer_fields: `tokenizer.*` metadata (see `pasture.tokenizer.Tokenizer.gguf_fields`).
    """
    if dtype not in WRITE_TYPES:
        raise ValueError(f"unknown GGUF dtype {dtype!r}; choose one of {', '.join(WRITE_TYPES)}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach() for k, v in state.items()}
    if config.tie_embeddings:
        state.pop("output.weight", None)
    check_shapes(state, config)
    state = permute_qk(state, config, half_to_interleaved)

    writer = gguf.GGUFWriter(out.with_name(out.name + ".tmp"), ARCHITECTURE)
    writer.add_name(name)
    writer.add_file_type(_FILE_TYPES[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_block_count(config.n_layers)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.dim)
    writer.add_feed_forward_length(config.ffn_hidden_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_vocab_size(config.vocab_size)
    for key, value in (tokenizer_fields or {}).items():
        _add_metadata(writer, key, value)
    if config.rope_scaling is not None:
        writer.add_tensor(ROPE_FREQS, rope_factors(config))
    for key in tqdm(sorted(state, key=_write_order), desc=f"writing {out.name}", unit="tensor", disable=not progress):
        values, qtype = _encode_tensor(state[key].float().cpu().numpy(), dtype)
        writer.add_tensor(_gguf_name(key), values, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out.with_name(out.name + ".tmp").replace(out)
    return out


def _write_order(name: str) -> tuple[int, int, str]:
    """Embedding, then layer by layer, then the final norm and output (llama.cpp's order)."""
    if name.startswith("layers."):
        return (1, int(name.split(".")[1]), name)
    return (0 if name.startswith("tok_") else 2, 0, name)


def gguf_tensor_types(path: str | Path) -> dict[str, str]:
    """Each tensor's GGML type name, for reports and tests."""
    return {t.name: t.tensor_type.name for t in open_gguf(path).tensors}


__all__ = [
    "ARCHITECTURE", "WRITE_TYPES", "config_from_gguf", "dequantize", "gguf_tensor_types", "is_gguf",
    "metadata_value", "open_gguf", "read_gguf", "rope_factors", "write_gguf",
]

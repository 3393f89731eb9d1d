"""Checkpoint formats: pasture, Hugging Face and Meta, in and out.

Our parameter names are Meta's (`layers.0.attention.wq.weight`), our q/k row order is
Hugging Face's (half-split rotary). So:
- HF <-> pasture is a rename;
- Meta <-> pasture is the identity on names plus the q/k row permutation that turns
  interleaved rotary pairs (2i, 2i+1) into halves (i, i + hd/2) and back.

Formats on disk:
- pasture: `config.json` (our ModelConfig, `"format": "pasture"`) + `model.safetensors`
- hf:      `config.json` (`model_type: llama`) + `model.safetensors` or sharded
           `model-0000x-of-0000y.safetensors` with `model.safetensors.index.json`
- meta:    `params.json` + `consolidated.00.pth` ... (one per model-parallel rank)

Nothing here unpickles arbitrary objects: safetensors, or torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pasture.errors import PastureError
from pasture.model.config import PRESETS, ConfigError, ModelConfig, RopeScaling

FORMATS = ("pasture", "hf", "meta")


class CheckpointError(PastureError, ValueError):
    """A checkpoint that cannot be read: missing, corrupt, or not matching its config."""


# ---------------------------------------------------------------- q/k permutation


def interleaved_to_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta -> pasture/HF row order within each head: [0, 2, 4, ..., 1, 3, 5, ...]."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def half_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `interleaved_to_half`."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def permute_qk(
    state: dict[str, torch.Tensor], config: ModelConfig, fn: Callable[[torch.Tensor, int], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`state` with `fn` (`half_to_interleaved` or `interleaved_to_half`) applied to every wq/wk.

    Meta's layout is also torchtitan's, whose Llama 3 parameter names are Meta's too.
    """
    out = dict(state)
    for key, tensor in state.items():
        if key.endswith("attention.wq.weight"):
            out[key] = fn(tensor, config.n_heads)
        elif key.endswith("attention.wk.weight"):
            out[key] = fn(tensor, config.n_kv_heads)
    return out


# ---------------------------------------------------------------- names

_HF_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_HF_TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)$")
_HF_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _rename(key: str, top: dict[str, str], layer: dict[str, str], layer_key: re.Pattern, layer_prefix: str) -> str | None:
    """`key` under the other naming, or None when it has no counterpart."""
    if key in top:
        return top[key]
    m = layer_key.match(key)
    if not m or m.group(2) not in layer:
        return None
    return f"{layer_prefix}{m.group(1)}.{layer[m.group(2)]}"


def to_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        name = _rename(key, _HF_TOP_NAMES, _HF_LAYER_NAMES, _LAYER_KEY, "model.layers.")
        if name is None:
            raise CheckpointError(f"no Hugging Face name for tensor {key!r}")
        out[name] = tensor
    return out


def from_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    top = {v: k for k, v in _HF_TOP_NAMES.items()}
    layer = {v: k for k, v in _HF_LAYER_NAMES.items()}
    out = {}
    for key, tensor in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue  # a buffer some old exports saved; we recompute it
        name = _rename(key, top, layer, _HF_LAYER_KEY, "layers.")
        if name is None:
            raise CheckpointError(f"unexpected tensor {key!r} in Hugging Face checkpoint")
        out[name] = tensor
    return out


# ---------------------------------------------------------------- configs


def _ffn_fields(dim: int, hidden: int) -> dict[str, Any]:
    """multiple_of / ffn_dim_multiplier of a preset that reproduces `hidden`, else an explicit width."""
    for cfg in PRESETS.values():
        trial = ModelConfig(dim=dim, n_heads=1, n_kv_heads=1, multiple_of=cfg.multiple_of,
                            ffn_dim_multiplier=cfg.ffn_dim_multiplier, rope_scaling=None)
        if trial.ffn_hidden_dim == hidden:
            return {"multiple_of": cfg.multiple_of, "ffn_dim_multiplier": cfg.ffn_dim_multiplier}
    return {"multiple_of": 256, "ffn_dim_multiplier": None, "ffn_dim": hidden}


LLAMA3_BOS_EOS = (128000, 128001)


def config_to_hf(config: ModelConfig, torch_dtype: str = "float32",
                 bos_eos: tuple[int | None, int | None] | None = None) -> dict[str, Any]:
    """transformers' config.json for `config`. `bos_eos`: the tokenizer's ids; by default Llama 3's,
    left out when the vocabulary does not hold them (an id past it breaks loaders such as vLLM)."""
    if bos_eos is None:
        bos_eos = LLAMA3_BOS_EOS if config.vocab_size > max(LLAMA3_BOS_EOS) else (None, None)
    rope_scaling = None
    if config.rope_scaling is not None:
        rope_scaling = {"rope_type": "llama3", **vars(config.rope_scaling)}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": config.max_seq_len,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": bos_eos[0],
        "eos_token_id": bos_eos[1],
        "torch_dtype": torch_dtype,
    }


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    if hf.get("model_type") != "llama":
        raise CheckpointError(f"config.json has model_type {hf.get('model_type')!r}; only 'llama' is supported")
    try:
        dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
        # transformers >= 5 keeps theta and scaling together in rope_parameters
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        theta = hf.get("rope_theta", rope.get("rope_theta", 10_000.0))
        scaling = None
        if rope.get("rope_type", rope.get("type")) == "llama3":
            scaling = RopeScaling(
                factor=float(rope["factor"]),
                low_freq_factor=float(rope["low_freq_factor"]),
                high_freq_factor=float(rope["high_freq_factor"]),
                original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
            )
        if hf.get("head_dim") not in (None, dim // n_heads):
            raise CheckpointError(f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads; not a Llama 3 layout")
        return ModelConfig(
            dim=dim,
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads", n_heads),
            vocab_size=hf["vocab_size"],
            norm_eps=hf.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            rope_scaling=scaling,
            max_seq_len=hf.get("max_position_embeddings", 8192),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            **_ffn_fields(dim, hf["intermediate_size"]),
        )
    except KeyError as e:
        raise CheckpointError(f"config.json lacks required key {e.args[0]!r}") from None


def config_to_meta(config: ModelConfig) -> dict[str, Any]:
    params: dict[str, Any] = {
        "dim": config.dim,
        "n_layers": config.n_layers,
        "n_heads": config.n_heads,
        "n_kv_heads": config.n_kv_heads,
        "vocab_size": config.vocab_size,
        "multiple_of": config.multiple_of,
        "ffn_dim_multiplier": config.ffn_dim_multiplier,
        "norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "use_scaled_rope": config.rope_scaling is not None,
    }
    if config.ffn_dim is not None:
        # Meta's formula reproduces any width when multiple_of is that width.
        base = int(2 * 4 * config.dim / 3)
        params["multiple_of"] = config.ffn_dim
        params["ffn_dim_multiplier"] = config.ffn_dim / base
    if config.rope_scaling is not None:
        params["rope_scaling"] = vars(config.rope_scaling).copy()
    return params


def config_from_meta(params: dict[str, Any], tied: bool) -> ModelConfig:
    try:
        dim = params["dim"]
        scaling = None
        if params.get("use_scaled_rope"):
            if "rope_scaling" in params:
                scaling = RopeScaling(**params["rope_scaling"])
            else:
                # Meta's params.json does not carry the factor; its code hard-codes 8, which
                # is right for 3.1 but not for 3.2 1B/3B (factor 32, llama-models #166/#241).
                is_32_small = tied and dim in (2048, 3072) and params["n_layers"] in (16, 28)
                scaling = RopeScaling(factor=32.0 if is_32_small else 8.0)
        return ModelConfig(
            dim=dim,
            n_layers=params["n_layers"],
            n_heads=params["n_heads"],
            n_kv_heads=params.get("n_kv_heads") or params["n_heads"],
            vocab_size=params["vocab_size"],
            multiple_of=params.get("multiple_of", 256),
            ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
            norm_eps=params.get("norm_eps", 1e-5),
            rope_theta=float(params.get("rope_theta", 10_000.0)),
            rope_scaling=scaling,
            max_seq_len=params.get("max_seq_len", 131_072),
            tie_embeddings=tied,
        )
    except KeyError as e:
        raise CheckpointError(f"params.json lacks required key {e.args[0]!r}") from None


# ---------------------------------------------------------------- reading


def detect_format(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p} is not a folder (expected config.json + model.safetensors, or params.json + consolidated.*.pth)")
    if (p / "params.json").exists():
        return "meta"
    if (p / "config.json").exists():
        cfg = _read_json(p / "config.json")
        return "pasture" if cfg.get("format") == "pasture" else "hf"
    raise CheckpointError(f"{p} holds neither config.json nor params.json; not a model checkpoint")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(_read_json(index)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        f = folder / name
        if not f.exists():
            raise CheckpointError(f"missing weights file {f}")
        try:
            state.update(load_file(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"corrupt weights file {f}: {e}") from None
    return state


# Meta model-parallel shards: how each tensor was split across ranks.
_META_CONCAT_DIM = {
    "tok_embeddings.weight": 0, "output.weight": 0,
    "attention.wq.weight": 0, "attention.wk.weight": 0, "attention.wv.weight": 0,
    "feed_forward.w1.weight": 0, "feed_forward.w3.weight": 0,
    "attention.wo.weight": 1, "feed_forward.w2.weight": 1,
}


def _read_meta_shards(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("consolidated.*.pth"))
    if not files:
        raise CheckpointError(f"{folder} has params.json but no consolidated.*.pth")
    shards = []
    for f in files:
        try:
            shards.append(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
        except Exception as e:  # torch raises many types for a damaged zip/pickle
            raise CheckpointError(f"corrupt weights file {f}: {type(e).__name__}: {e}") from None
    if len(shards) == 1:
        return dict(shards[0])
    merged = {}
    for key in shards[0]:
        suffix = _LAYER_KEY.match(key).group(2) if key.startswith("layers.") else key
        dim = _META_CONCAT_DIM.get(suffix)
        merged[key] = shards[0][key] if dim is None else torch.cat([s[key] for s in shards], dim=dim)
    return merged


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig, str]:
    """Weights in pasture names and row order, the model config, and the format found."""
    folder = Path(path)
    fmt = detect_format(folder)
    try:
        if fmt == "meta":
            state = _read_meta_shards(folder)
            tied = "output.weight" not in state or torch.equal(state["output.weight"], state.get("tok_embeddings.weight"))
            config = config_from_meta(_read_json(folder / "params.json"), tied=tied)
            state = permute_qk(state, config, interleaved_to_half)
        elif fmt == "hf":
            config = config_from_hf(_read_json(folder / "config.json"))
            state = from_hf_names(_read_safetensors(folder))
        else:
            raw = _read_json(folder / "config.json")
            raw.pop("format")
            config = ModelConfig.from_dict(raw)
            state = _read_safetensors(folder)
    except ConfigError as e:
        raise CheckpointError(f"{folder}: {e}") from None
    if config.tie_embeddings:
        state.pop("output.weight", None)
    check_shapes(state, config)
    return state, config, fmt


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    hd, ffn = config.head_dim, config.ffn_hidden_dim
    shapes = {"tok_embeddings.weight": (config.vocab_size, config.dim), "norm.weight": (config.dim,)}
    if not config.tie_embeddings:
        shapes["output.weight"] = (config.vocab_size, config.dim)
    for i in range(config.n_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attention.wq.weight": (config.n_heads * hd, config.dim),
            p + "attention.wk.weight": (config.n_kv_heads * hd, config.dim),
            p + "attention.wv.weight": (config.n_kv_heads * hd, config.dim),
            p + "attention.wo.weight": (config.dim, config.n_heads * hd),
            p + "feed_forward.w1.weight": (ffn, config.dim),
            p + "feed_forward.w3.weight": (ffn, config.dim),
            p + "feed_forward.w2.weight": (config.dim, ffn),
            p + "attention_norm.weight": (config.dim,),
            p + "ffn_norm.weight": (config.dim,),
        }
    return shapes


def check_shapes(state: dict[str, torch.Tensor], config: ModelConfig) -> None:
    """Raise naming the first tensor that is missing, unexpected, or of the wrong shape."""
    want = expected_shapes(config)
    for key, shape in want.items():
        if key not in state:
            raise CheckpointError(f"tensor {key!r} is missing from the checkpoint")
        if tuple(state[key].shape) != shape:
            raise CheckpointError(
                f"tensor {key!r} has shape {tuple(state[key].shape)} but the config expects {shape}"
            )
    extra = sorted(set(state) - set(want))
    if extra:
        raise CheckpointError(f"unexpected tensor {extra[0]!r} in checkpoint (config has {config.n_layers} layers)")


# ---------------------------------------------------------------- writing


def write_checkpoint(state: dict[str, torch.Tensor], config: ModelConfig, dst: str | Path, fmt: str,
                     bos_eos: tuple[int | None, int | None] | None = None) -> Path:
    """Write pasture-layout weights `state` as `fmt` into folder `dst` (`bos_eos`: see `config_to_hf`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    if config.tie_embeddings:
        state.pop("output.weight", None)
    check_shapes(state, config)
    dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    if fmt == "pasture":
        config.save(out / "config.json")
        save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    elif fmt == "hf":
        (out / "config.json").write_text(json.dumps(config_to_hf(config, dtype, bos_eos), indent=2) + "\n")
        save_file(to_hf_names(state), out / "model.safetensors", metadata={"format": "pt"})
    else:
        meta = permute_qk(state, config, half_to_interleaved)
        if config.tie_embeddings:
            meta["output.weight"] = meta["tok_embeddings.weight"].clone()  # Meta's code has a separate output
        (out / "params.json").write_text(json.dumps(config_to_meta(config), indent=2) + "\n")
        torch.save(meta, out / "consolidated.00.pth")
    return out


def convert(src: str | Path, dst: str | Path, to: str) -> tuple[str, Path]:
    """Convert checkpoint folder `src` into format `to` at `dst`; returns (source format, dst)."""
    state, config, fmt = read_checkpoint(src)
    return fmt, write_checkpoint(state, config, dst, to)

"""MODEL arguments: a run folder, a checkpoint, an HF / Meta folder, a GGUF file or a preset,
with the chat encoder that goes with it.

The tokenizer comes from an explicit `--tokenizer`, else from MODEL itself
(`pasture.tokenizer.Tokenizer.load`: tokenizer.model, tokenizer.json + its config, a GGUF's
vocabulary, in the folder or its run folder), or Meta's Llama 3 tokenizer for the `llama3*`
presets. A Llama 3 vocabulary gets Llama 3's dialog format, any other its own chat
template. Every post-training run copies its tokenizer into its folder, so the next stage
and `pasture serve RUN` find it there.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pasture.errors import PastureError
from pasture.model import PRESETS, ModelConfig, Transformer
from pasture.post.encode import ChatEncoder, encoder_for
from pasture.runs import load
from pasture.tokenizer import Tokenizer, TokenizerError, write_bpe_ranks
from pasture.tokenizer.hf import HFTokenizer


class ModelSpecError(PastureError):
    """A MODEL argument that names nothing loadable, or has no tokenizer."""


def load_model(spec: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[Transformer, ModelConfig]:
    """`pasture.runs.load` (a run's final model, else its newest checkpoint; any model format),
    with a one-line error naming what MODEL may be."""
    try:
        return load(spec, device=device, dtype=dtype)
    except FileNotFoundError as e:
        raise ModelSpecError(f"model {spec}: {e}") from None


def load_tokenizer(spec: str | Path, tokenizer: str | Path | None = None) -> Tokenizer:
    """MODEL's tokenizer (see the module docstring)."""
    if tokenizer is None and str(spec) in PRESETS and not Path(spec).exists():
        if not str(spec).startswith("llama3"):
            raise ModelSpecError(f"preset {spec} has no tokenizer of its own; pass --tokenizer")
        tokenizer = "llama3"
    try:
        return Tokenizer.load(tokenizer or spec)
    except TokenizerError as e:
        raise ModelSpecError(f"no tokenizer for {spec}: {e}; pass --tokenizer") from None


def load_encoder(spec: str | Path, tokenizer: str | Path | None = None) -> ChatEncoder:
    """MODEL's chat encoder: Llama 3's dialog format or the model's own template."""
    return encoder_for(load_tokenizer(spec, tokenizer))


def save_encoder(encoder: ChatEncoder, folder: str | Path) -> None:
    """Write the encoder's tokenizer into a run or model folder, so `load_encoder(folder)` finds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = encoder.tokenizer
    if isinstance(tok, HFTokenizer):
        tok.save(folder)
    else:
        write_bpe_ranks([t for t, _ in sorted(tok.mergeable_ranks.items(), key=lambda item: item[1])],
                        folder / "tokenizer.model")

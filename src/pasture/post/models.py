"""MODEL arguments: a run folder, a checkpoint, an HF / Meta folder, a GGUF file or a preset,
with the chat encoder that goes with it.

The encoder comes from, in order: an explicit `--tokenizer`, the model's own files
(`tokenizer.model` → Llama 3's dialog format; `tokenizer.json` + a chat template →
that template), or Meta's Llama 3 tokenizer for the `llama3*` presets. Every post-training
run copies its encoder's files into its folder, so the next stage finds them there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pasture.errors import PastureError
from pasture.model import PRESETS, ModelConfig, Transformer, load
from pasture.post.encode import ChatEncoder, Llama3Encoder, TemplateEncoder, jinja_renderer
from pasture.tokenizer import Tokenizer, write_bpe_ranks

TEMPLATE_FILE = "chat_template.jinja"
# end-of-turn tokens of the common chat templates (Llama 3, ChatML, Gemma, Phi)
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")


class ModelSpecError(PastureError):
    """A MODEL argument that names nothing loadable, or has no tokenizer."""


def load_model(spec: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[Transformer, ModelConfig]:
    """`pasture.model.load`, with a one-line error naming what MODEL may be."""
    try:
        return load(spec, device=device, dtype=dtype)
    except FileNotFoundError as e:
        raise ModelSpecError(f"model {spec}: {e}") from None


def _folder(spec: str | Path) -> Path | None:
    path = Path(spec)
    if path.is_file():
        return path.parent
    return path if path.is_dir() else None


def _template_encoder(folder: Path) -> TemplateEncoder:
    from tokenizers import Tokenizer as HFTokenizer

    config: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        config = json.loads((folder / "tokenizer_config.json").read_text())
    template = config.get("chat_template")
    if (folder / TEMPLATE_FILE).is_file():
        template = (folder / TEMPLATE_FILE).read_text()
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
    if not template:
        raise ModelSpecError(f"{folder}: tokenizer.json but no chat template (tokenizer_config.json "
                             f"'chat_template' or {TEMPLATE_FILE})")
    tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    return template_encoder(tok, template, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")))


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def template_encoder(tok, template: str, bos_token: str | None, eos_token: str | None) -> TemplateEncoder:
    """A `TemplateEncoder` over a `tokenizers.Tokenizer` and a Jinja chat template."""
    special = {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    ends = [special[t] for t in END_OF_TURN_TOKENS if t in special]
    if eos_token in special and special[eos_token] not in ends:
        ends.append(special[eos_token])
    if not ends:
        raise ModelSpecError("the tokenizer has no end-of-turn token (eos, <|eot_id|>, <|im_end|>, ...)")
    render = jinja_renderer(template, bos_token=bos_token or "", eos_token=eos_token or "")
    encoder = TemplateEncoder(render, lambda text: tok.encode(text, add_special_tokens=False).ids,
                              lambda ids: tok.decode(list(ids), skip_special_tokens=False), ends,
                              format_ids=list(special.values()), pad_id=ends[0])
    encoder.files = {"tokenizer.json": tok.to_str(), TEMPLATE_FILE: template,
                     "tokenizer_config.json": json.dumps({"bos_token": bos_token, "eos_token": eos_token})}
    return encoder


def load_encoder(spec: str | Path, tokenizer: str | Path | None = None) -> ChatEncoder:
    """The chat encoder of MODEL (see the module docstring); `tokenizer` overrides it."""
    source = tokenizer or spec
    folder = _folder(source)
    if folder is not None and (folder / "tokenizer.json").is_file():
        return _template_encoder(folder)
    if folder is not None and (folder / "tokenizer.model").is_file():
        return Llama3Encoder(Tokenizer.load(folder / "tokenizer.model"))
    if tokenizer is not None or (str(spec) in PRESETS and str(spec).startswith("llama3")):
        return Llama3Encoder(Tokenizer.load(str(tokenizer or "llama3")))
    raise ModelSpecError(f"no tokenizer found for {spec}: expected tokenizer.model or tokenizer.json "
                         "(+ chat template) beside it; pass --tokenizer")


def save_encoder(encoder: ChatEncoder, folder: str | Path) -> None:
    """Copy the encoder's files into a run folder, so `load_encoder(folder)` finds them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(encoder, Llama3Encoder):
        tok = encoder.tokenizer
        write_bpe_ranks([tok.token_bytes(i) for i in range(tok.num_base_tokens)], folder / "tokenizer.model")
        return
    for name, text in encoder.files.items():
        (folder / name).write_text(text)

"""A reward model: the Transformer with a scalar head, read at the response's last token.

The head lives here, in a wrapper, so the Transformer stays the plain language model
(its checkpoint still loads as one). The score of a sequence is the head's value at the
position `score_index` names, the end-of-turn token of the response, never at a pad:
reading "the last non-pad token" breaks when the pad id equals eos, the classic bug.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pasture.errors import PastureError
from pasture.model import Transformer
from pasture.post.data import BadRecord
from pasture.post.encode import ChatEncoder, Messages, encode_response, pad_examples
from pasture.post.losses import read_scores
from pasture.runs import load
from pasture.tokenizer.chat_format import ChatFormatError
from pasture.train import checkpoint as ckpt

HEAD_FILE = "reward_head.pt"


class RewardModel(nn.Module):
    """`scores(tokens, score_index)` -> one scalar per sequence."""

    def __init__(self, transformer: Transformer) -> None:
        super().__init__()
        self.transformer = transformer
        device = transformer.tok_embeddings.weight.device
        self.head = nn.Linear(transformer.config.dim, 1, bias=False, device=device)
        if device.type != "meta":
            self.reset_head()

    @property
    def config(self):
        return self.transformer.config

    def reset_head(self) -> None:
        """Zero weights: every score starts at 0, so the first loss is exactly ln 2."""
        nn.init.zeros_(self.head.weight)

    def init_weights(self, buffer_device: torch.device | str | None = None) -> None:
        self.transformer.init_weights(buffer_device)
        self.reset_head()

    def forward(self, tokens: torch.Tensor, score_index: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(tokens, return_hidden=True)
        values = self.head(hidden).squeeze(-1).float()  # [N, T]
        return read_scores(values, score_index)



def read_head(spec: str | Path) -> torch.Tensor | None:
    """The head's weight [1, dim] of a reward model folder: `reward_head.pt` beside a plain model
    (an averaged one), or the `head.weight` of a training run's / checkpoint's newest checkpoint;
    None when `spec` has no reward head."""
    folder = Path(spec)
    if (folder / HEAD_FILE).is_file():
        return torch.load(folder / HEAD_FILE, weights_only=True)["weight"]
    if not ckpt.is_run_or_checkpoint(folder):
        return None
    import torch.distributed.checkpoint as dcp

    checkpoint = ckpt.resolve(folder)
    keys = dcp.FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    if "model.head.weight" not in keys:
        return None
    head = torch.empty(keys["model.head.weight"].size)
    dcp.load({"model": {"head.weight": head}}, checkpoint_id=str(checkpoint), no_dist=True)
    return head


def load_reward_model(spec: str | Path, device: str | torch.device = "cpu") -> RewardModel:
    """A reward model from its run or checkpoint folder, or a model folder with `reward_head.pt`."""
    head = read_head(spec)
    if head is None:
        raise PastureError(f"{spec} is not a reward model (no reward head; train one with `pasture reward`)")
    transformer, _ = load(spec, device=device)
    model = RewardModel(transformer)
    with torch.no_grad():
        model.head.weight.copy_(head.to(model.head.weight))
    return model.eval()


def save_head(head: torch.Tensor, folder: str | Path) -> None:
    torch.save({"weight": head.detach().float().cpu()}, Path(folder) / HEAD_FILE)


@torch.no_grad()
def score_responses(model: RewardModel, encoder: ChatEncoder, prompts: Sequence[Messages],
                    responses: Sequence[Mapping[str, Any]], max_len: int = 4096, batch_size: int = 16) -> list[float]:
    """The reward of each (prompt, response); a response that cannot be scored (too long,
    empty) gets -inf, so it never wins a comparison."""
    device = model.head.weight.device
    scores = [float("-inf")] * len(responses)
    examples = []
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        try:
            examples.append((i, encode_response(encoder, prompt, response, max_len)))
        except (BadRecord, ChatFormatError):
            continue
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = pad_examples([e for _, e in chunk], encoder.pad_id)
        values = model(batch["tokens"].to(device), batch["score_index"].to(device)).float().cpu().tolist()
        for (i, _), value in zip(chunk, values):
            scores[i] = value
    return scores

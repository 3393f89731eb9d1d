"""A reward model: the Transformer with a scalar head, read at the response's last token.

The head lives here, in a wrapper, so the Transformer stays the plain language model
(its checkpoint still loads as one). The score of a sequence is the head's value at the
position `score_index` names, the end-of-turn token of the response, never at a pad:
reading "the last non-pad token" breaks when the pad id equals eos, the classic bug.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pasture.model import Transformer
from pasture.post.losses import read_scores

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

    def save_head(self, folder: str | Path) -> Path:
        path = Path(folder) / HEAD_FILE
        torch.save({"weight": self.head.weight.detach().float().cpu()}, path)
        return path

    def load_head(self, folder: str | Path) -> None:
        state = torch.load(Path(folder) / HEAD_FILE, weights_only=True)
        with torch.no_grad():
            self.head.weight.copy_(state["weight"].to(self.head.weight))


def has_reward_head(folder: str | Path) -> bool:
    return (Path(folder) / HEAD_FILE).is_file()

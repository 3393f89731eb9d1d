"""The engine's KV cache: allocated once as `slots` rows of `max_len` positions.

Running requests always occupy the first rows, so a decode step reads a plain view of the
cache (rows 0..n-1, positions 0..longest) without gathering; a request that finishes
swaps rows with the last running one. A free row keeps the keys and values it last held
(`tokens` says for which ids), so a later prompt with the same prefix starts from them.

`StepCache` is what the model's forward gets as `cache=`: its `update(layer, k, v)` writes
this step's keys and values at each row's own positions. The engine passes the matching
per-row rotary `positions` and attention `mask` to forward, so rows of different lengths
share one batch. Prompts prefilled together are padded to the longest; each row keeps one
spare position past `max_len`, where padding writes, outside every key range read.
"""

from __future__ import annotations

import torch

from pasture.model.config import ModelConfig
from pasture.model.llama import AttentionMask


class SlotCache:
    def __init__(self, config: ModelConfig, slots: int, max_len: int, dtype: torch.dtype, device: torch.device) -> None:
        # one extra position per row: padded decode rows (fixed CUDA-graph shapes) write there
        shape = (slots, config.n_kv_heads, max_len + 1, config.head_dim)
        # A tensor per layer, not one for all: a compiled step then writes each in place, where a
        # write through a view of one big tensor made inductor copy the whole cache every step.
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.slots = slots
        self.max_len = max_len
        self.tokens: list[list[int]] = [[] for _ in range(slots)]  # ids whose keys/values each row holds

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def longest_prefix(self, prompt: list[int], rows: range) -> tuple[int, int]:
        """(row, length) of the longest cached prefix of `prompt` among `rows`; at most len(prompt) - 1,
        since the last prompt token must run through the model to give the first logits."""
        best_row, best = -1, 0
        for row in rows:
            n = common_prefix_length(self.tokens[row], prompt[:-1])
            if n > best:
                best_row, best = row, n
        return best_row, best

    def copy_prefix(self, src: int, dst: int, length: int) -> None:
        for layer in self.k + self.v:
            layer[dst, :, :length] = layer[src, :, :length]
        self.tokens[dst] = self.tokens[src][:length]

    def swap(self, a: int, b: int) -> None:
        if a == b:
            return
        length = max(len(self.tokens[a]), len(self.tokens[b]))
        pair, flipped = [a, b], [b, a]
        for layer in self.k + self.v:
            layer[pair, :, :length] = layer[flipped, :, :length]
        self.tokens[a], self.tokens[b] = self.tokens[b], self.tokens[a]


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class StepCache:
    """One forward's view of the slot cache: rows `first_row..first_row+n-1`.

    starts: [n] long, the position each row's new tokens begin at (its cached length).
    key_len: positions the attention reads (the longest row after this step, or padded).
    positions: [n, T] long, where each new token goes when there are several per row (a
        prefill; padding points at the spare position); one token per row goes to `starts`.
    """

    length = 0  # forward advances its own counter; each row's length lives in `starts`

    def __init__(self, store: SlotCache, first_row: int, starts: torch.Tensor, key_len: int,
                 positions: torch.Tensor | None = None) -> None:
        self.store = store
        self.first_row = first_row
        self.starts = starts
        self.key_len = key_len
        self.positions = positions

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, T = k.shape[0], k.shape[2]
        rows = slice(self.first_row, self.first_row + n)
        k_layer, v_layer = self.store.k[layer], self.store.v[layer]
        if T == 1:
            index = torch.arange(self.first_row, self.first_row + n, device=k.device)
            k_layer[index, :, self.starts] = k[:, :, 0]
            v_layer[index, :, self.starts] = v[:, :, 0]
        else:  # prefill: rows of runs of positions, [n, T] indices give [n, T, heads, head_dim]
            index = torch.arange(self.first_row, self.first_row + n, device=k.device)[:, None]
            k_layer[index, :, self.positions] = k.transpose(1, 2)
            v_layer[index, :, self.positions] = v.transpose(1, 2)
        return k_layer[rows, :, :self.key_len], v_layer[rows, :, :self.key_len]


def step_inputs(starts: torch.Tensor, n_new: int, key_len: int, lengths: torch.Tensor | None = None,
                pad_position: int = 0) -> tuple[torch.Tensor, AttentionMask]:
    """Rotary positions [n, T] and the attention mask for rows whose new tokens start at `starts`.

    lengths: [n] new tokens per row when rows have fewer than `n_new`; the rest is padding,
    placed at `pad_position` (the cache's spare one), whose outputs the caller ignores.
    """
    offsets = torch.arange(n_new, device=starts.device)[None]
    positions = starts[:, None] + offsets
    if lengths is not None:
        positions = torch.where(offsets < lengths[:, None], positions, pad_position)
    if n_new > 1 and int(starts.max()) == 0:  # real tokens see only their own row's earlier ones
        return positions, AttentionMask("causal")
    keys = torch.arange(key_len, device=starts.device)
    allowed = keys[None, None, :] <= positions[:, :, None]  # [n, T, keys]
    return positions, AttentionMask("dense", dense=allowed[:, None])

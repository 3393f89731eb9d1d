"""The engine's KV cache: allocated once as `slots` rows of `max_len` positions.

Running requests always occupy the first rows, so a decode step reads a plain view of the
cache (rows 0..n-1, positions 0..longest) without gathering; a request that finishes
swaps rows with the last running one. A free row keeps the keys and values it last held
(`tokens` says for which ids), so a later prompt with the same prefix starts from them.

`StepCache` is what the model's forward gets as `cache=`: its `update(layer, k, v)` writes
this step's keys and values at each row's own position. The engine passes the matching
per-row rotary `positions` and attention `mask` to forward, so rows of different lengths
share one batch.
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
        limit = len(prompt) - 1
        for row in rows:
            held = self.tokens[row]
            n = 0
            for a, b in zip(held, prompt[:limit]):
                if a != b:
                    break
                n += 1
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


class StepCache:
    """One forward's view of the slot cache: rows `0..n-1` (decode) or one row (prefill).

    starts: [n] long, the position each row's new tokens begin at (its cached length).
    key_len: positions the attention reads (the longest row after this step, or padded).
    """

    length = 0  # forward advances its own counter; each row's length lives in `starts`

    def __init__(self, store: SlotCache, first_row: int, starts: torch.Tensor, key_len: int) -> None:
        self.store = store
        self.first_row = first_row
        self.starts = starts
        self.key_len = key_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, T = k.shape[0], k.shape[2]
        rows = slice(self.first_row, self.first_row + n)
        k_layer, v_layer = self.store.k[layer], self.store.v[layer]
        if T == 1:
            index = torch.arange(self.first_row, self.first_row + n, device=k.device)
            k_layer[index, :, self.starts] = k[:, :, 0]
            v_layer[index, :, self.starts] = v[:, :, 0]
        else:  # prefill: one row, a run of positions
            start = int(self.starts[0])
            k_layer[rows, :, start:start + T] = k
            v_layer[rows, :, start:start + T] = v
        return k_layer[rows, :, :self.key_len], v_layer[rows, :, :self.key_len]


def step_inputs(starts: torch.Tensor, n_new: int, key_len: int) -> tuple[torch.Tensor, AttentionMask]:
    """Rotary positions [n, T] and the attention mask for rows whose new tokens start at `starts`."""
    positions = starts[:, None] + torch.arange(n_new, device=starts.device)[None]
    if n_new > 1 and int(starts.max()) == 0:
        return positions, AttentionMask("causal")
    keys = torch.arange(key_len, device=starts.device)
    allowed = keys[None, None, :] <= positions[:, :, None]  # [n, T, keys]
    return positions, AttentionMask("dense", dense=allowed[:, None])

"""Sequences that share a prefix, packed into one row as a tree.

The choices of a multiple-choice item share their question; a preference pair's chosen and
rejected responses share their prompt. A tree row runs that prefix once: the common prefix,
then each sequence's remaining tokens as a branch that attends to the prefix and to itself
only, with rotary positions that continue the prefix in every branch. A sequence's last token
predicts nothing, so it is not fed. Each sequence's log-probabilities then equal those of a
plain forward over it alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

PAD_BRANCH = -2  # padding after a row's tokens: attends causally to padding only
PREFIX_BRANCH = -1  # the tokens every sequence of the row shares


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    shortest = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(shortest):
        token = first[i]
        if any(s[i] != token for s in seqs):
            return i
    return shortest


def tree_length(seqs: Sequence[Sequence[int]]) -> int:
    """How many tokens `pack_tree(seqs, ...)` feeds (to sort and batch rows by, before packing)."""
    feeds = [s[:-1] for s in seqs]
    shared = common_prefix_length(feeds)
    return shared + sum(len(f) - shared for f in feeds)


@dataclass
class TreeRow:
    tokens: list[int]
    positions: list[int]  # rotary positions: the prefix's, then each branch continuing it
    branch: list[int]  # PREFIX_BRANCH, or i for sequence i's own tokens
    targets: list[list[tuple[int, int]]]  # per sequence: (row index whose logits predict, token predicted)


def pack_tree(seqs: Sequence[Sequence[int]], scored: Sequence[Iterable[int]]) -> TreeRow:
    """One row for `seqs`; `scored[i]` are the indices j >= 1 of `seqs[i]` whose token is
    predicted (by position j - 1), in the order their targets are listed."""
    feeds = [s[:-1] for s in seqs]
    shared = common_prefix_length(feeds)
    tokens, positions, branch = list(feeds[0][:shared]), list(range(shared)), [PREFIX_BRANCH] * shared
    targets = []
    for i, (feed, seq, js) in enumerate(zip(feeds, seqs, scored)):
        start = len(tokens)
        tokens.extend(feed[shared:])
        positions.extend(range(shared, len(feed)))
        branch.extend([i] * (len(feed) - shared))
        targets.append([(j - 1 if j - 1 < shared else start + j - 1 - shared, seq[j]) for j in js])
    return TreeRow(tokens, positions, branch, targets)


def pad_tree_rows(rows: Sequence[TreeRow], length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tokens, positions and branch ids [rows, length] (long), right-padded; padding continues
    its row's positions from 0 and has branch PAD_BRANCH."""
    tokens = torch.zeros(len(rows), length, dtype=torch.long)
    positions = torch.zeros(len(rows), length, dtype=torch.long)
    branch = torch.full((len(rows), length), PAD_BRANCH, dtype=torch.long)
    for b, row in enumerate(rows):
        n = len(row.tokens)
        tokens[b, :n] = torch.tensor(row.tokens, dtype=torch.long)
        positions[b, :n] = torch.tensor(row.positions, dtype=torch.long)
        positions[b, n:] = torch.arange(length - n)
        branch[b, :n] = torch.tensor(row.branch, dtype=torch.long)
    return tokens, positions, branch


def tree_attention_mask(positions: torch.Tensor, branch: torch.Tensor, prefix: int = 0) -> torch.Tensor:
    """bool [B, 1, T, prefix + T] from positions and branch ids [B, T]: a query sees the row's
    shared prefix and its own branch, causally by position; `prefix` earlier cached positions
    (a prefix common to every row) are seen by all."""
    same = (branch[:, None, :] == PREFIX_BRANCH) | (branch[:, None, :] == branch[:, :, None])
    causal = positions[:, None, :] <= positions[:, :, None]
    pad_query = branch[:, :, None] == PAD_BRANCH
    allowed = torch.where(pad_query, (branch[:, None, :] == PAD_BRANCH) & causal, same & causal)
    if prefix:
        seen = torch.ones(*branch.shape, prefix, dtype=torch.bool, device=branch.device)
        allowed = torch.cat([seen, allowed], dim=-1)
    return allowed[:, None]

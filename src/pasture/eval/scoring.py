"""Batched log-likelihood scoring that runs every shared prefix once.

A *group* is a list of (context ids, continuation ids) requests that usually share a prefix:
the choices of one multiple-choice item share the few-shot examples and the question. The
scorer packs each group into one row as a tree (`pasture.model.tree`: the common prefix once,
then each request's own tokens as a branch). Groups are sorted by packed length and batched
with little padding (a batch ends where lengths drop below `min_fill` of its longest); the
prefix that all groups of a batch share (a few-shot context common to the batch, or just
BOS) is run once with batch size 1 into a KV cache that every row reads. Only the positions
that predict continuation tokens are projected to the vocabulary.

Every log-probability equals the one a plain forward over `context + continuation` gives
(tests/test_eval.py checks it against unbatched forwards).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from pasture.model.llama import AttentionMask, KVCache, Transformer
from pasture.model.tree import TreeRow, common_prefix_length, pack_tree, pad_tree_rows, tree_attention_mask, tree_length

Request = tuple[list[int], list[int]]  # (context ids, continuation ids); context never empty
Score = tuple[float, bool]  # (sum of log-probabilities, every continuation token the argmax)


@dataclass
class _Row:
    """One group packed as a tree, after the batch's shared prefix was removed."""

    tree: TreeRow
    targets: list[tuple[int, int]]  # every request's continuation targets, request after request
    spans: list[tuple[int, int]]  # each request's slice of `targets`


def _pack(seqs: list[list[int]], n_continuation: list[int], skip: int) -> _Row:
    """Pack one group's sequences (the first `skip` tokens, shared by the whole batch, dropped)."""
    rests = [s[skip:] for s in seqs]
    tree = pack_tree(rests, [range(len(r) - n, len(r)) for r, n in zip(rests, n_continuation)])
    targets, spans = [], []
    for request_targets in tree.targets:
        spans.append((len(targets), len(targets) + len(request_targets)))
        targets.extend(request_targets)
    return _Row(tree, targets, spans)


class LoglikelihoodScorer:
    """Scores groups of requests with a pasture Transformer; `batch_size` groups per forward."""

    min_fill = 0.8  # a batch's shortest group is at least this fraction of its longest

    def __init__(self, model: Transformer, batch_size: int = 32, max_length: int | None = None,
                 progress: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.max_length = max_length or model.config.max_seq_len
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return self.model.tok_embeddings.weight.device

    def _sequences(self, group: list[Request]) -> tuple[list[list[int]], list[int]]:
        """Each request as one sequence, left-truncated as lm-eval does: the model reads at most
        `max_length` tokens (the last token is fed too, but nothing reads its logits)."""
        seqs, ns = [], []
        for context, continuation in group:
            if not context:
                raise ValueError("a request needs a non-empty context (use BOS / end-of-text as lm-eval does)")
            whole = (context + continuation)[-(self.max_length + 1):]
            seqs.append(whole)
            ns.append(min(len(continuation), len(whole) - 1))
        return seqs, ns

    @torch.inference_mode()
    def score(self, groups: list[list[Request]], desc: str = "scoring") -> list[list[Score]]:
        """(log-probability, is-greedy) of every request, in the order given."""
        prepared = [self._sequences(g) for g in groups]
        lengths = [tree_length(seqs) for seqs, _ in prepared]
        order = sorted(range(len(groups)), key=lambda i: -lengths[i])
        out: list[list[Score]] = [[] for _ in groups]
        bar = tqdm(total=len(groups), desc=desc, unit="item", disable=not self.progress, leave=False)
        for batch in self._batches(order, lengths):
            for i, scores in zip(batch, self._score_batch([prepared[i] for i in batch])):
                out[i] = scores
            bar.update(len(batch))
        bar.close()
        return out

    def _batches(self, order: list[int], lengths: list[int]) -> list[list[int]]:
        """Up to `batch_size` groups per forward, longest first; a batch also ends where the next
        group is shorter than `min_fill` of the batch's first, so padding stays under a fifth."""
        batches: list[list[int]] = []
        for i in order:
            if not batches or len(batches[-1]) == self.batch_size or lengths[i] < self.min_fill * lengths[batches[-1][0]]:
                batches.append([])
            batches[-1].append(i)
        return batches

    def _score_batch(self, batch: list[tuple[list[list[int]], list[int]]]) -> list[list[Score]]:
        every = [s for seqs, _ in batch for s in seqs]
        # the batch prefix must end before any request's first predicting position
        limit = min(len(s) - n - 1 for seqs, ns in batch for s, n in zip(seqs, ns))
        prefix = min(common_prefix_length(every), limit)
        rows = [_pack(seqs, ns, prefix) for seqs, ns in batch]
        length = max(1, max(len(r.tree.tokens) for r in rows))
        device = self.device
        tokens, positions, branch = pad_tree_rows([r.tree for r in rows], length)
        cache = self._prefix_cache(every[0][:prefix], len(rows), length) if prefix else None
        mask = AttentionMask("dense", dense=tree_attention_mask(positions, branch, prefix).to(device))
        hidden = self.model(tokens.to(device), cache=cache, positions=(positions + prefix).to(device), mask=mask,
                            return_hidden=True)
        rows_index = torch.tensor([b for b, row in enumerate(rows) for _ in row.targets])
        cols_index = torch.tensor([index for row in rows for index, _ in row.targets])
        wanted = torch.tensor([token for row in rows for _, token in row.targets], device=device)
        logprobs = torch.log_softmax(self.model.output(hidden[rows_index.to(device), cols_index.to(device)]).float(), -1)
        picked = logprobs.gather(-1, wanted[:, None])[:, 0].double().cpu()
        greedy = (logprobs.argmax(-1) == wanted).cpu()
        results, offset = [], 0
        for row in rows:
            scores = []
            for first, last in row.spans:
                scores.append((float(picked[offset + first:offset + last].sum()),
                               bool(greedy[offset + first:offset + last].all())))
            results.append(scores)
            offset += len(row.targets)
        return results

    def _prefix_cache(self, prefix: list[int], batch: int, length: int) -> KVCache:
        """Keys and values of the batch's shared prefix, computed once and copied to every row."""
        model, device = self.model, self.device
        dtype = model.tok_embeddings.weight.dtype
        single = KVCache(model.config, 1, len(prefix), dtype, device)
        model(torch.tensor([prefix], device=device), cache=single, return_hidden=True)
        cache = KVCache(model.config, batch, len(prefix) + length, dtype, device)
        cache.k[:, :, :, :len(prefix)] = single.k
        cache.v[:, :, :, :len(prefix)] = single.v
        cache.length = len(prefix)
        return cache


def rolling_windows(tokens: list[int], prefix_token: int, max_length: int) -> list[Request]:
    """lm-eval's disjoint rolling windows: every token predicted once, each window with as much
    context as fits; the first conditioned on `prefix_token` (BOS or end-of-text)."""
    requests: list[Request] = []
    if not tokens:
        return requests
    first = min(max_length, len(tokens))
    requests.append(([prefix_token], tokens[:first]))
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, max_length)
        end = predicted + n
        window = tokens[max(0, end - max_length - 1):end]
        requests.append((window[:-n], window[-n:]))
        predicted = end
    return requests

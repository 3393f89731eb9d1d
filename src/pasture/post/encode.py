"""Conversations to token ids with loss masks, packed or padded into training batches.

The loss mask is what SFT trains on: every token an assistant message produces (its
content, its tool calls, and its end-of-turn token, so the model learns to stop), and
nothing else (system / user / tool-output turns, the role headers). Two encoders:

- `Llama3Encoder`: Meta's Llama 3.1 dialog format (`pasture.tokenizer.ChatFormat`);
- `TemplateEncoder`: a model's own Jinja chat template (ChatML, ...); inside an assistant
  turn the tokens after its end-of-turn token (ChatML's trailing newline) are masked too.

`format_ids` are the formatting tokens (headers, end-of-turn, begin-of-text): DPO drops
them from its log-prob sums, as Llama 3 did (`response_mask(..., mask_format_tokens=True)`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from pasture.model.tree import pack_tree, pad_tree_rows
from pasture.post.data import BadRecord, Preference, Skipped
from pasture.tokenizer.chat_format import ChatFormat, ChatFormatError, EncodedChat
from pasture.tokenizer.chat_template import ChatTemplate, chat_format_for
from pasture.tokenizer.tokenizer import Tokenizer
from pasture.train.loss import IGNORE_INDEX

Messages = Sequence[Mapping[str, Any]]


class ChatEncoder(Protocol):
    """What post-training needs from a chat format."""

    format_ids: frozenset[int]  # header / end-of-turn / begin-of-text tokens
    stop_ids: list[int]  # tokens that end an assistant turn when sampling
    pad_id: int  # filler for padded rows (never read: padded positions are masked)

    def encode(self, messages: Messages, add_generation_prompt: bool = False) -> EncodedChat: ...

    def decode(self, tokens: Sequence[int]) -> str: ...


class Llama3Encoder:
    """Llama 3.1's dialog format with a tiktoken `Tokenizer`."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.chat = ChatFormat(tokenizer)
        self.format_ids = frozenset({tokenizer.bos_id, tokenizer.start_header_id, tokenizer.end_header_id,
                                     tokenizer.eot_id, tokenizer.eom_id})
        self.stop_ids = [tokenizer.eot_id, tokenizer.eom_id, tokenizer.eos_id]
        self.pad_id = tokenizer.pad_id

    def encode(self, messages: Messages, add_generation_prompt: bool = False) -> EncodedChat:
        return self.chat.encode_dialog_prompt(messages, add_generation_prompt=add_generation_prompt)

    def decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode([t for t in tokens if t not in self.format_ids])


class TemplateEncoder:
    """A model's own chat template (`pasture.tokenizer.ChatTemplate`). Its mask covers what each
    assistant message adds after its generation prompt; here the tokens after that turn's
    end-of-turn token (ChatML's trailing newline) are masked too: the model stops before them."""

    def __init__(self, tokenizer: Tokenizer, template: ChatTemplate) -> None:
        self.tokenizer, self.template = tokenizer, template
        self.stop_ids = list(tokenizer.stop_tokens)
        if not self.stop_ids:
            raise ChatFormatError(f"{tokenizer.name}: no end-of-turn token (eos, <|eot_id|>, <|im_end|>, ...)")
        self.format_ids = frozenset(tokenizer.special_tokens.values()) | frozenset(self.stop_ids)
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else self.stop_ids[0]

    def encode(self, messages: Messages, add_generation_prompt: bool = False) -> EncodedChat:
        encoded = self.template.encode_dialog_prompt(messages, add_generation_prompt=add_generation_prompt)
        mask, stops = encoded.loss_mask, frozenset(self.stop_ids)
        after_stop = False
        for i, token in enumerate(encoded.tokens):
            if not mask[i]:
                after_stop = False
            elif after_stop:
                mask[i] = False
            elif token in stops:
                after_stop = True
        return encoded

    def decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode([t for t in tokens if t not in self.format_ids])


def encoder_for(tokenizer: Tokenizer) -> ChatEncoder:
    """Llama 3's dialog format for a Llama 3 vocabulary, else the tokenizer's own chat template."""
    chat = chat_format_for(tokenizer)
    return Llama3Encoder(tokenizer) if isinstance(chat, ChatFormat) else TemplateEncoder(tokenizer, chat)


# ---------------------------------------------------------------- SFT: packed rows


@dataclass
class Example:
    tokens: list[int]
    loss_mask: list[bool]
    score_index: int = -1  # a reward model's read-out position: the response's last token (its end of turn)


def _encode_each(items: Sequence[Any], encode_one, skipped: Skipped, label: str) -> list[Any]:
    """`encode_one(item)` for each item; one that raises BadRecord (or cannot be encoded) is
    counted in `skipped` under its reason instead."""
    out = []
    for n, item in enumerate(items):
        try:
            out.append(encode_one(item))
        except ChatFormatError as e:
            skipped.add(BadRecord("unencodable", str(e)), f"{label} {n}")
        except BadRecord as e:
            skipped.add(e, f"{label} {n}")
    return out


def encode_conversations(encoder: ChatEncoder, conversations: Sequence[Messages], max_len: int,
                         skipped: Skipped) -> list[Example]:
    """Each conversation encoded with its loss mask; too long, unencodable or untrained ones
    are counted in `skipped` (and the run stops when none is left)."""
    def encode_one(messages: Messages) -> Example:
        encoded = encoder.encode(messages)
        if len(encoded.tokens) > max_len:
            raise BadRecord("too_long", f"{len(encoded.tokens)} tokens > context {max_len}")
        if not any(encoded.loss_mask[1:]):
            raise BadRecord("nothing_to_train", "no assistant token")
        return Example(encoded.tokens, encoded.loss_mask)

    examples = _encode_each(conversations, encode_one, skipped, "conversation")
    skipped.kept = len(examples)
    skipped.require_some("conversations after encoding")
    return examples


def pack(examples: Sequence[Example], seq_len: int, pad_id: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Conversations packed into [rows, seq_len] with per-token document ids, first-fit after a
    seeded shuffle. Targets are the next token where the mask trains it, else IGNORE_INDEX; a
    target never crosses a document boundary, and padding is a document of its own."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    rows: list[list[int]] = []  # example indices per row
    free: list[int] = []
    for i in order:
        need = len(examples[i].tokens) - 1
        slot = next((r for r, room in enumerate(free) if room >= need), None)
        if slot is None:
            rows.append([])
            free.append(seq_len)
            slot = len(rows) - 1
        rows[slot].append(i)
        free[slot] -= need
    inputs = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), seq_len), IGNORE_INDEX, dtype=torch.long)
    document_ids = torch.zeros((len(rows), seq_len), dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for doc, i in enumerate(members):
            tokens = torch.tensor(examples[i].tokens)
            mask = torch.tensor(examples[i].loss_mask)
            n = len(tokens) - 1
            inputs[r, at:at + n] = tokens[:-1]
            targets[r, at:at + n] = torch.where(mask[1:], tokens[1:], IGNORE_INDEX)
            document_ids[r, at:at + n] = doc
            at += n
        document_ids[r, at:] = len(members)
    return {"inputs": inputs, "targets": targets, "document_ids": document_ids}


# ---------------------------------------------------------------- preferences: padded pairs


@dataclass
class EncodedPair:
    """One (better, worse) pair: each side is prompt + response tokens with the response's mask."""

    chosen: Example
    rejected: Example


def response_mask(encoded: EncodedChat, prompt_len: int, format_ids: frozenset[int],
                  mask_format_tokens: bool) -> list[bool]:
    """The response's tokens (after the prompt), without the formatting tokens when asked."""
    return [i >= prompt_len and trained and not (mask_format_tokens and token in format_ids)
            for i, (token, trained) in enumerate(zip(encoded.tokens, encoded.loss_mask))]


def encode_response(encoder: ChatEncoder, prompt: Messages, response: Mapping[str, Any], max_len: int,
                    mask_format_tokens: bool = True, prompt_len: int | None = None) -> Example:
    """Prompt + one assistant response, the response's tokens marked, its end of turn as the
    score position; BadRecord when it is too long or leaves nothing to score."""
    if prompt_len is None:
        prompt_len = len(encoder.encode(prompt, add_generation_prompt=True).tokens)
    encoded = encoder.encode([*prompt, response])
    if len(encoded.tokens) > max_len:
        raise BadRecord("too_long", f"{len(encoded.tokens)} tokens > context {max_len}")
    mask = response_mask(encoded, prompt_len, encoder.format_ids, mask_format_tokens)
    if not any(mask):
        raise BadRecord("empty_response_tokens", "a response with no token left to score")
    last = max(i for i, trained in enumerate(encoded.loss_mask) if trained)
    return Example(encoded.tokens, mask, score_index=last)


def encode_pairs(encoder: ChatEncoder, records: Sequence[Preference], max_len: int, skipped: Skipped,
                 mask_format_tokens: bool = True) -> list[EncodedPair]:
    """Every (better, worse) pair of every record (an edited response gives three pairs)."""
    def encode_one(record: Preference) -> list[EncodedPair]:
        prompt_len = len(encoder.encode(record.prompt, add_generation_prompt=True).tokens)
        sides = [encode_response(encoder, record.prompt, response, max_len, mask_format_tokens, prompt_len)
                 for response in record.responses]
        return [EncodedPair(sides[i], sides[j]) for i in range(len(sides)) for j in range(i + 1, len(sides))]

    pairs = [pair for pairs in _encode_each(records, encode_one, skipped, "record") for pair in pairs]
    skipped.kept = len(pairs)
    skipped.require_some("preference pairs after encoding")
    return pairs


def pad_pairs(pairs: Sequence[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected (see `pad_examples`)."""
    return pad_examples([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)


def tree_pairs(pairs: Sequence[EncodedPair]) -> dict[str, torch.Tensor]:
    """Each pair as one tree row (`pasture.model.tree`): the prompt once, then the chosen and the
    rejected response as two branches, right-padded to the longest row.

    `inputs`, `positions`, `branch` [pairs, T] feed the model; `chosen_targets` and
    `rejected_targets` [pairs, T] hold at each row position the scored token it predicts for
    that side (IGNORE_INDEX elsewhere: the last shared position predicts both sides' first
    response token); `lengths` [pairs] each row's real positions.
    """
    trees = [pack_tree([p.chosen.tokens, p.rejected.tokens],
                       [[j for j in range(1, len(side.tokens)) if side.loss_mask[j]] for side in (p.chosen, p.rejected)])
             for p in pairs]
    width = max(len(t.tokens) for t in trees)
    inputs, positions, branch = pad_tree_rows(trees, width)
    side_targets = torch.full((2, len(trees), width), IGNORE_INDEX, dtype=torch.long)
    for r, tree in enumerate(trees):
        for side, targets in enumerate(tree.targets):
            index, token = zip(*targets)
            side_targets[side, r, list(index)] = torch.tensor(token)
    return {"inputs": inputs, "positions": positions, "branch": branch, "chosen_targets": side_targets[0],
            "rejected_targets": side_targets[1], "lengths": torch.tensor([len(t.tokens) for t in trees])}


def pad_examples(sides: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """A batch of N sequences right-padded to the longest.

    `tokens` [N, T] are the whole sequences (what a reward model reads), `inputs` /
    `targets` [N, T-1] the next-token view (targets IGNORE_INDEX outside the scored
    response), `lengths` [N] each row's real input positions, `score_index` [N] each
    response's last token (its end of turn), where a reward model reads its score:
    never a pad, whatever the pad id is.
    """
    width = max(len(s.tokens) for s in sides)
    tokens = torch.full((len(sides), width), pad_id, dtype=torch.long)
    scored = torch.zeros((len(sides), width), dtype=torch.bool)
    for r, side in enumerate(sides):
        tokens[r, :len(side.tokens)] = torch.tensor(side.tokens)
        scored[r, :len(side.tokens)] = torch.tensor(side.loss_mask)
    targets = torch.where(scored[:, 1:], tokens[:, 1:], IGNORE_INDEX)
    return {"tokens": tokens, "inputs": tokens[:, :-1], "targets": targets,
            "lengths": torch.tensor([len(s.tokens) - 1 for s in sides]),
            "score_index": torch.tensor([s.score_index for s in sides])}

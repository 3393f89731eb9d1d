"""Post-training data: validation counts, loss masks token by token, packing."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from post_fixtures import byte_tokenizer, chatml_encoder, chatml_tokenizer, llama3_encoder, write_jsonl
from pasture.post.data import PostDataError, Skipped, read_conversations, read_preferences
from pasture.post.encode import (Example, encode_conversations, encode_pairs, pack, pad_pairs)
from pasture.train.loss import IGNORE_INDEX

USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}


def test_bad_sft_records_are_counted_with_reasons(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [USER, ASSISTANT]},
        {"messages": [USER]},  # no assistant turn
        {"messages": [{"role": "wizard", "content": "x"}, ASSISTANT]},  # unknown role
        "{not json",
        {"messages": []},
        {"messages": [{"role": "system", "content": "s"}, USER, ASSISTANT]},
    ])
    conversations, skipped = read_conversations([path])
    assert len(conversations) == 2 and skipped.kept == 2
    assert dict(skipped.counts) == {"no_assistant_turn": 1, "unknown_role": 1, "not_json": 1, "no_messages": 1}
    assert "sft.jsonl:2" in skipped.examples["no_assistant_turn"]


def test_bad_preference_records_are_counted(tmp_path):
    good = {"messages": [USER], "chosen": ASSISTANT, "rejected": {"role": "assistant", "content": "go away"}}
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        good,
        {**good, "chosen": {"role": "assistant", "content": "  "}},  # empty chosen
        {**good, "rejected": ASSISTANT},  # chosen == rejected
        {**good, "messages": [{"role": "robot", "content": "x"}]},
        {**good, "edited": {"role": "assistant", "content": "hello there!"}},
    ])
    records, skipped = read_preferences([path])
    assert dict(skipped.counts) == {"empty_chosen": 1, "chosen_equals_rejected": 1, "unknown_role": 1}
    assert [len(r.responses) for r in records] == [2, 3]
    assert len(records[1].pairs()) == 3  # edited > chosen, edited > rejected, chosen > rejected
    assert [p[0]["content"] for p in records[1].pairs()] == ["hello there!", "hello there!", "hello"]


def test_parquet_with_json_string_columns(tmp_path):
    import json

    table = pa.table({"messages": [json.dumps([USER])], "chosen": [json.dumps(ASSISTANT)], "rejected": ["no"]})
    pq.write_table(table, tmp_path / "p.parquet")
    records, skipped = read_preferences([tmp_path / "p.parquet"])
    assert skipped.kept == 1 and records[0].responses[1] == {"role": "assistant", "content": "no"}


def test_nothing_left_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [USER]}, {"messages": [USER]}])
    with pytest.raises(PostDataError, match="no usable SFT conversations: 0 kept, 2 skipped \\(2 no_assistant_turn\\)"):
        read_conversations([path])


def test_too_long_conversations_are_skipped():
    encoder = llama3_encoder()
    skipped = Skipped()
    long = [USER, {"role": "assistant", "content": "x" * 100}]
    examples = encode_conversations(encoder, [[USER, ASSISTANT], long], max_len=64, skipped=skipped)
    assert len(examples) == 1 and dict(skipped.counts) == {"too_long": 1}


# ---------------------------------------------------------------- masks, token by token

TOOL_DIALOG = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "Q?"},
    {"role": "assistant", "content": "", "tool_calls": [{"tool_name": "brave_search", "arguments": {"query": "q"}}]},
    {"role": "ipython", "content": "R"},
    {"role": "assistant", "content": "A."},
]


def test_llama3_mask_token_by_token():
    tok = byte_tokenizer()
    enc = llama3_encoder().encode(TOOL_DIALOG)
    b = lambda s: list(s.encode())  # noqa: E731 (bytes are ids in the byte tokenizer)
    header = lambda role: [tok.start_header_id, *b(role), tok.end_header_id, *b("\n\n")]  # noqa: E731
    call = b('brave_search.call(query="q")')
    expected = (
        [(tok.bos_id, False)]
        + [(t, False) for t in header("system") + b("S") + [tok.eot_id]]
        + [(t, False) for t in header("user") + b("Q?") + [tok.eot_id]]
        + [(t, False) for t in header("assistant")] + [(t, True) for t in call + [tok.eom_id]]  # tool call trained
        + [(t, False) for t in header("ipython") + b("R") + [tok.eot_id]]  # tool output masked
        + [(t, False) for t in header("assistant")] + [(t, True) for t in b("A.") + [tok.eot_id]]  # eot trained
    )
    assert list(zip(enc.tokens, enc.loss_mask)) == expected


def test_chatml_mask_token_by_token():
    tok = chatml_tokenizer()
    enc = chatml_encoder().encode(TOOL_DIALOG)
    ids = lambda s: tok.encode(s, allowed_special="all")  # noqa: E731
    start, end, nl = 256, 257, ids("\n")
    turn = lambda role, body: [start, *ids(role + "\n" + body), end, *nl]  # noqa: E731
    call = ids('<tool_call>brave_search {"query": "q"}</tool_call>')
    expected = (
        [(t, False) for t in turn("system", "S") + turn("user", "Q?")]
        + [(t, False) for t in [start, *ids("assistant\n")]] + [(t, True) for t in call + [end]] + [(nl[0], False)]
        + [(t, False) for t in turn("tool", "R")]
        + [(t, False) for t in [start, *ids("assistant\n")]] + [(t, True) for t in ids("A.") + [end]] + [(nl[0], False)]
    )
    assert list(zip(enc.tokens, enc.loss_mask)) == expected


def test_generation_prompt_is_the_prefix_of_the_reply():
    for encoder in (llama3_encoder(), chatml_encoder()):
        prompt = encoder.encode([USER], add_generation_prompt=True).tokens
        full = encoder.encode([USER, ASSISTANT]).tokens
        assert full[:len(prompt)] == prompt


def test_dpo_masks_formatting_tokens_unless_switched_off():
    encoder = llama3_encoder()
    tok = encoder.tokenizer
    from pasture.post.data import Preference

    record = Preference([USER], [ASSISTANT, {"role": "assistant", "content": "bye"}])
    (masked,) = encode_pairs(encoder, [record], 256, Skipped())
    (kept,) = encode_pairs(encoder, [record], 256, Skipped(), mask_format_tokens=False)
    scored = lambda ex: [t for t, m in zip(ex.tokens, ex.loss_mask) if m]  # noqa: E731
    assert scored(masked.chosen) == list(b"hello")
    assert scored(kept.chosen) == [*b"hello", tok.eot_id]
    assert scored(masked.rejected) == list(b"bye")
    assert masked.chosen.tokens[masked.chosen.score_index] == tok.eot_id  # the reward reads the end of turn


# ---------------------------------------------------------------- batches


def test_pack_keeps_documents_apart_and_targets_masked():
    a = Example([1, 2, 3, 4], [False, False, True, True])
    b = Example([5, 6, 7], [False, True, True])
    batch = pack([a, b], seq_len=8, pad_id=0, seed=0)
    assert batch["inputs"].shape == (1, 8)
    rows = list(zip(batch["inputs"][0].tolist(), batch["targets"][0].tolist(), batch["document_ids"][0].tolist()))
    docs = {}
    for inp, tgt, doc in rows:
        docs.setdefault(doc, []).append((inp, tgt))
    by_first = {v[0][0]: v for v in docs.values()}
    assert by_first[1] == [(1, IGNORE_INDEX), (2, 3), (3, 4)]
    assert by_first[5] == [(5, 6), (6, 7)]
    assert by_first[0] == [(0, IGNORE_INDEX)] * 3  # padding: its own document, never trained
    assert int((batch["targets"] != IGNORE_INDEX).sum()) == 4


def test_pad_pairs_scores_at_the_end_of_turn_not_at_pads():
    encoder = llama3_encoder()
    from pasture.post.data import Preference

    record = Preference([USER], [{"role": "assistant", "content": "a much longer answer"}, ASSISTANT])
    pairs = encode_pairs(encoder, [record], 256, Skipped())
    batch = pad_pairs(pairs, pad_id=encoder.tokenizer.eot_id)  # pad == end of turn: the classic bug's setup
    eot = encoder.tokenizer.eot_id
    lengths = [len(pairs[0].chosen.tokens), len(pairs[0].rejected.tokens)]
    assert batch["tokens"].shape == (2, max(lengths))
    # the shorter row is padded with eot ids; the score is read at its own eot, not the row's first/last eot
    assert batch["score_index"].tolist() == [n - 1 for n in lengths]
    assert batch["tokens"][1, batch["score_index"][1]] == eot
    assert torch.equal(batch["inputs"], batch["tokens"][:, :-1])

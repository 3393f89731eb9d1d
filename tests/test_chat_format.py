"""pasture.tokenizer.ChatFormat against Meta's llama_models ChatFormat, plus the SFT loss mask."""

import pytest
from llama_models.datatypes import RawMessage, StopReason, ToolPromptFormat
from llama_models.datatypes import ToolCall as MetaToolCall
from llama_models.llama3 import chat_format as meta_chat
from llama_models.llama3 import tokenizer as meta_tok

from pasture.tokenizer import ChatFormat, ChatFormatError, Message, Tokenizer, ToolCall


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load("llama3")


@pytest.fixture(scope="module")
def meta_format():
    return meta_chat.ChatFormat(meta_tok.Tokenizer.get_instance())


def meta_message(m: dict) -> RawMessage:
    """The llama_models equivalent of one of our dict messages."""
    calls = [MetaToolCall(call_id=str(i), tool_name=c["tool_name"], arguments=c["arguments"])
             for i, c in enumerate(m.get("tool_calls", []))]
    stop = m.get("stop_reason")
    if stop is None and calls:
        stop = "end_of_message"
    return RawMessage(role="tool" if m["role"] == "ipython" else m["role"], content=m["content"],
                      tool_calls=calls, stop_reason=StopReason(stop) if stop else None)


SYSTEM = {"role": "system", "content": "Environment: ipython\nTools: brave_search, wolfram_alpha\n\nYou are helpful."}
DIALOGS = {
    "single_user": [{"role": "user", "content": "Hello!"}],
    "multi_turn": [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "  What is 2+2?\n"},
        {"role": "assistant", "content": "Arr, it be 4.", "stop_reason": "end_of_turn"},
        {"role": "user", "content": "And in 中文? 🙂"},
        {"role": "assistant", "content": "四 <|eot_id|> is just text here."},
        {"role": "user", "content": "Thanks"},
    ],
    "brave_search": [
        SYSTEM,
        {"role": "user", "content": "Price of gold?"},
        {"role": "assistant", "content": "", "stop_reason": "end_of_message",
         "tool_calls": [{"tool_name": "brave_search", "arguments": {"query": "price of 1oz gold"}}]},
        {"role": "ipython", "content": '{"price": "2400 USD"}'},
        {"role": "assistant", "content": "About 2400 USD per ounce."},
    ],
    "code_interpreter": [
        SYSTEM,
        {"role": "user", "content": "Compute 12**7"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"tool_name": "code_interpreter", "arguments": {"code": "print(12**7)"}}]},
        {"role": "tool", "content": "35831808"},
        {"role": "assistant", "content": "12**7 = 35831808", "stop_reason": "end_of_turn"},
    ],
    "custom_tool": [
        {"role": "user", "content": "Weather in Paris? Use get_weather."},
        {"role": "assistant", "content": "", "stop_reason": "end_of_message",
         "tool_calls": [{"tool_name": "get_weather", "arguments": {"city": "Paris", "days": 3, "metric": True}}]},
        {"role": "ipython", "content": "sunny, 21C"},
    ],
}


@pytest.mark.parametrize("name", sorted(DIALOGS))
def test_dialog_ids_match_meta(tokenizer, meta_format, name):
    dialog = DIALOGS[name]
    ours = ChatFormat(tokenizer).encode_dialog_prompt(dialog)
    theirs = meta_format.encode_dialog_prompt([meta_message(m) for m in dialog]).tokens
    assert ours.tokens == theirs
    assert len(ours.loss_mask) == len(ours.tokens)
    assert ours.tokens[0] == 128000 and ours.tokens.count(128000) == 1
    assert ours.tokens[-4:] == [128006, 78191, 128007, 271]  # open assistant header


@pytest.mark.parametrize("fmt", ["json", "function_tag", "python_list"])
def test_custom_tool_formats_match_meta(tokenizer, meta_format, fmt):
    dialog = DIALOGS["custom_tool"]
    ours = ChatFormat(tokenizer, tool_prompt_format=fmt).encode_dialog_prompt(dialog).tokens
    theirs = meta_format.encode_dialog_prompt([meta_message(m) for m in dialog], ToolPromptFormat(fmt)).tokens
    assert ours == theirs


def expected_assistant_tokens(tokenizer, message: dict, fmt: str = "json") -> list[int]:
    """What the mask must cover, written out from the message: tag, content, calls, terminator."""
    from pasture.tokenizer.chat_format import render_tool_call

    calls = [ToolCall.from_value(c) for c in message.get("tool_calls", [])]
    tokens = [128010] if calls and calls[0].tool_name == "code_interpreter" else []
    tokens += tokenizer.encode(message["content"])
    for call in calls:
        tokens += tokenizer.encode(render_tool_call(call, fmt))
    eom = message.get("stop_reason") == "end_of_message" or (calls and message.get("stop_reason") is None)
    return tokens + [128008 if eom else 128009]


@pytest.mark.parametrize("name", sorted(DIALOGS))
def test_loss_mask_covers_assistant_content_and_terminator(tokenizer, name):
    dialog = DIALOGS[name]
    encoded = ChatFormat(tokenizer).encode_dialog_prompt(dialog, add_generation_prompt=False)
    masked = [t for t, m in zip(encoded.tokens, encoded.loss_mask) if m]
    expected = [t for m in dialog if m["role"] == "assistant" for t in expected_assistant_tokens(tokenizer, m)]
    assert masked == expected
    assert sum(encoded.loss_mask) == len(expected)
    # headers are never trained on
    assert not any(m for t, m in zip(encoded.tokens, encoded.loss_mask) if t in (128000, 128006, 128007))


def test_loss_mask_counts(tokenizer):
    fmt = ChatFormat(tokenizer)
    encoded = fmt.encode_dialog_prompt(DIALOGS["multi_turn"], add_generation_prompt=False)
    # "Arr, it be 4." = 7 tokens + eot; "四 <|eot_id|> is just text here." = 12 tokens + eot
    assert [len(tokenizer.encode(t)) for t in ("Arr, it be 4.", "四 <|eot_id|> is just text here.")] == [7, 12]
    assert sum(encoded.loss_mask) == 7 + 1 + 12 + 1
    assert encoded.tokens[-1] == 128009 and not encoded.loss_mask[-1]  # the last message is the user's
    code = fmt.encode_message(DIALOGS["code_interpreter"][2])
    assert code.tokens[:5] == [128006, 78191, 128007, 271, 128010]
    assert code.tokens[-1] == 128008 and sum(code.loss_mask) == len(code.tokens) - 4


def test_message_forms(tokenizer):
    fmt = ChatFormat(tokenizer)
    as_dict = {"role": "assistant", "content": None,
               "tool_calls": [{"id": "c1", "type": "function",
                               "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    as_dataclass = Message(role="assistant", tool_calls=[ToolCall("get_weather", {"city": "Paris"})])
    assert fmt.encode_message(as_dict).tokens == fmt.encode_message(as_dataclass).tokens
    assert fmt.encode_message(as_dataclass).tokens[-1] == 128008
    parts = {"role": "user", "content": [{"type": "text", "text": "Hi "}, "there"]}
    assert fmt.encode_message(parts).tokens[4:-1] == tokenizer.encode("Hi ") + tokenizer.encode("there")
    assert fmt.encode_header("tool") == fmt.encode_header("ipython") == [128006, 23799, 4690, 128007, 271]


def test_bad_messages(tokenizer):
    fmt = ChatFormat(tokenizer)
    with pytest.raises(ChatFormatError, match="unknown role 'robot'"):
        fmt.encode_dialog_prompt([{"role": "robot", "content": "beep"}])
    with pytest.raises(ChatFormatError, match="unknown stop_reason"):
        fmt.encode_message({"role": "assistant", "content": "x", "stop_reason": "done"})
    with pytest.raises(ChatFormatError, match="arguments are not JSON"):
        fmt.encode_message({"role": "assistant", "tool_calls": [{"name": "f", "arguments": "{oops"}]})
    with pytest.raises(ChatFormatError, match="needs a 'query' argument"):
        fmt.encode_message({"role": "assistant", "tool_calls": [{"tool_name": "brave_search", "arguments": {}}]})
    with pytest.raises(ChatFormatError, match="unknown tool prompt format"):
        ChatFormat(tokenizer, tool_prompt_format="xml")

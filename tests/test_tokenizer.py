"""pasture.tokenizer.Tokenizer against Meta's own Llama 3 tokenizer (llama-models), id for id."""

import random

import pytest
from llama_models.llama3 import tokenizer as meta_tokenizer

from pasture.errors import PastureError
from pasture.tokenizer import SPECIAL_TOKEN_NAMES, Tokenizer, TokenizerError, resolve_tokenizer_path
from pasture.tokenizer.tokenizer import split_for_tiktoken



@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return Tokenizer.load("llama3")


@pytest.fixture(scope="module")
def meta():
    return meta_tokenizer.Tokenizer.get_instance()


VARIED_TEXTS = {
    "empty": "",
    "english": "The quick brown fox jumps over the lazy dog. It's what they'd've said, isn't it?",
    "code": 'def f(x: int) -> int:\n    """Square."""\n    return x ** 2  # comment\n\n\tif a != b:\r\n\t\tpass\n',
    "numbers": "1 12 123 1234 12345 3.14159 -42 1,000,000 0x1F 2024-07-23",
    "chinese": "我们训练了一个语言模型，它可以理解中文。",
    "japanese": "日本語のテキストとカタカナ、ひらがな。",
    "korean": "한국어 문장을 토큰화합니다.",
    "arabic": "هذا نص باللغة العربية مع أرقام ١٢٣",
    "hindi": "यह हिंदी में एक वाक्य है।",
    "cyrillic": "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "thai": "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ",
    "emoji": "👋🏽 hello 🌍🚀 family: 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵",
    "whitespace": "a  b   c\t\t d\n\n\n e \r\n\r\n   \n  f     ",
    "special_strings": "<|begin_of_text|>hi<|eot_id|><|start_header_id|>user<|end_header_id|> <|reserved_special_token_9|>",
    "mixed_case_contractions": "I'M sure THEY'LL come; she'S here, WE'VE won.",
    "accents": "Ça va? Él está aquí. Straße. naïve café",
    "control": "null\x00char bell\x07 del\x7f",
    "odd_whitespace": "a\u3000b\u00a0c\u2028d\x85e\x1cf\u200bg",
}


@pytest.mark.parametrize("name", sorted(VARIED_TEXTS))
def test_encode_matches_meta_and_round_trips(ours, meta, name):
    text = VARIED_TEXTS[name]
    ids = ours.encode(text)
    assert ids == meta.encode(text, bos=False, eos=False)
    assert ours.decode(ids) == text
    assert ours.encode(text, bos=True, eos=True) == meta.encode(text, bos=True, eos=True)


def test_special_tokens_match_meta(ours, meta):
    assert ours.special_tokens == meta.special_tokens
    assert list(ours.special_tokens) == list(SPECIAL_TOKEN_NAMES)
    assert (ours.n_words, ours.vocab_size, ours.num_base_tokens) == (128256, 128256, 128000)
    assert (ours.bos_id, ours.eos_id, ours.eom_id, ours.eot_id) == (128000, 128001, 128008, 128009)
    assert (ours.pad_id, ours.python_tag_id, ours.start_header_id, ours.end_header_id) == (128004, 128010, 128006, 128007)
    assert ours.stop_tokens == meta.stop_tokens == [128001, 128008, 128009]
    assert ours.special_tokens["<|image|>"] == 128011
    assert ours.special_tokens["<|reserved_special_token_245|>"] == 128255
    assert ours.encode("Hello world") == [9906, 1917]


def test_special_token_strings_opt_in(ours, meta):
    text = VARIED_TEXTS["special_strings"]
    assert ours.encode(text, allowed_special="all") == meta.encode(text, bos=False, eos=False, allowed_special="all")
    assert ours.encode(text, allowed_special="all")[:3] == [128000, 6151, 128009]
    only_eot = ours.encode(text, allowed_special={"<|eot_id|>"})
    assert only_eot == meta.encode(text, bos=False, eos=False, allowed_special={"<|eot_id|>"})
    assert 128009 in only_eot and 128000 not in only_eot
    assert not any(i >= 128000 for i in ours.encode(text))
    with pytest.raises(ValueError):
        ours.encode(text, disallowed_special="all")


def test_long_inputs_match_meta(ours, meta):
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789.,;:!?-_/()[]éü中文"
    no_spaces = "".join(rng.choice(alphabet) for _ in range(300_000))
    prose = " ".join(VARIED_TEXTS.values())
    long_text = (prose * (900_000 // len(prose) + 1))[:900_000]  # crosses two 400,000-char chunk edges
    spaces = "word " + " " * 60_000 + "\n" * 30_000 + " end"
    odd_spaces = "\u3000" * 26_000 + "x" * 25_001 + "\x1c" * 25_000 + "y"
    for text in (no_spaces, long_text, spaces, odd_spaces):
        ids = ours.encode(text)
        assert ids == meta.encode(text, bos=False, eos=False)
        assert ours.decode(ids) == text
    assert len(ours.encode(no_spaces)) > 100_000


def test_split_for_tiktoken_cuts_where_meta_does(meta):
    rng = random.Random(1)
    for text in ("abc", "a" * 25_000, "a" * 25_001, " " * 75_001 + "b" * 50_000 + " x",
                 "".join(rng.choice(["a" * 9_000, " " * 13_000, "\n"]) for _ in range(30))):
        assert list(split_for_tiktoken(text)) == list(meta._split_whitespaces_or_nonwhitespaces(text, 25_000))
    assert list(split_for_tiktoken("")) == []  # Meta encodes no chunk at all for empty text
    chunks = list(split_for_tiktoken("ab " * 300_000))
    assert [len(c) for c in chunks] == [400_000, 400_000, 100_000]


def test_surrogates_match_meta(ours, meta):
    text = "lone \ud800 surrogate and \udfff"
    assert ours.encode(text) == meta.encode(text, bos=False, eos=False)


def test_encode_batch_equals_encode(ours):
    texts = [*VARIED_TEXTS.values(), "x" * 60_000]
    assert ours.encode_batch(texts) == [ours.encode(t) for t in texts]
    assert ours.encode_batch(texts, bos=True, eos=True, num_threads=2) == [ours.encode(t, bos=True, eos=True) for t in texts]
    special = VARIED_TEXTS["special_strings"]
    assert ours.encode_batch([special], allowed_special="all") == [ours.encode(special, allowed_special="all")]


def test_decode_rejects_unknown_ids(ours):
    assert ours.decode([128000, 9906]) == "<|begin_of_text|>Hello"
    with pytest.raises(TokenizerError, match="token id 128256 is not in the vocabulary"):
        ours.decode([9906, 128256])


def _write(tmp_path, lines: list[str]):
    path = tmp_path / "tokenizer.model"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _byte_lines() -> list[str]:
    import base64

    return [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]


def test_malformed_files_name_file_and_line(tmp_path):
    good = _byte_lines()
    cases = {
        "one field": (good[:2] + ["IQ=="] + good[3:], ":3: expected '<base64 token> <rank>', got 1 fields"),
        "bad base64": (good[:4] + ["!!!! 4"] + good[5:], ":5: '!!!!' is not base64"),
        "bad rank": (good[:1] + ["AQ== one"] + good[2:], ":2: rank 'one' is not a non-negative integer"),
        "duplicate rank": (good + ["YWI= 7"], ":257: rank 7 already used on line 8"),
        "duplicate token": (good + ["AA== 256"], ":257: token b'\\x00' already has rank 0"),
        "gap": (good + ["YWI= 300"], "ranks must run 0..256 but the largest is 300"),
        "missing byte": (good[:10] + good[11:], "ranks must run 0..254"),
    }
    for name, (lines, message) in cases.items():
        path = _write(tmp_path, lines)
        with pytest.raises(TokenizerError) as err:
            Tokenizer.load(path)
        assert str(path) in str(err.value), name
        assert message in str(err.value), name
    assert issubclass(TokenizerError, PastureError)


def test_missing_byte_and_missing_file(tmp_path):
    lines = _byte_lines()
    lines[65] = "YWI= 65"  # b"ab" takes the rank of b"A"
    with pytest.raises(TokenizerError, match="not a byte-level BPE: 1 single bytes have no rank"):
        Tokenizer.load(_write(tmp_path, lines))
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.load(tmp_path / "nope.model")


def test_small_file_gets_specials_after_its_ranks(tmp_path):
    tok = Tokenizer.load(_write(tmp_path, _byte_lines() + ["", "YWI= 256"]))  # blank lines are skipped
    assert (tok.num_base_tokens, tok.n_words, tok.bos_id, tok.eot_id) == (257, 513, 257, 266)
    assert tok.encode("abc") == [256, ord("c")]
    assert Tokenizer.load(tmp_path).num_base_tokens == 257  # a folder means its tokenizer.model


def test_resolve_llama3_path():
    path = resolve_tokenizer_path("llama3")
    assert path.name == "tokenizer.model" and path.stat().st_size == 2_183_982

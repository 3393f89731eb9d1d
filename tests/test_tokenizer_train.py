"""Training a byte-level BPE with HF tokenizers and writing it as a tiktoken tokenizer.model."""

import base64
import json
import sysconfig
from pathlib import Path

import pytest

from pasture.cli import main
from pasture.tokenizer import Tokenizer, TokenizerError, train_tokenizer
from pasture.tokenizer.train import byte_level_alphabet

MULTILINGUAL = [
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "我们训练了一个语言模型，它可以理解中文。",
    "هذا نص باللغة العربية",
    "यह हिंदी में एक वाक्य है।",
    "ภาษาไทยไม่มีการเว้นวรรค",
    "emoji 👋🏽🌍 and numbers 1234567 3.14",
]


def corpus_texts(limit_chars: int = 400_000, doc_chars: int = 2_000) -> list[str]:
    """Python standard library source cut into documents, plus a few other scripts."""
    texts = []
    total = 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        for start in range(0, min(len(source), 20_000), doc_chars):
            texts.append(source[start : start + doc_chars])
            total += len(texts[-1])
        if total >= limit_chars:
            break
    return texts + MULTILINGUAL * 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(corpus_texts()):
            f.write(json.dumps({"id": str(i), "text": text}, ensure_ascii=False) + "\n")
    (folder / "readme.txt").write_text("A plain text file is one more document.\n" * 20)
    return folder


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    stats = train_tokenizer(corpus, 1000, out, holdout_fraction=0.05, show_progress=False)
    return out, stats


def test_written_file_format(trained):
    out, stats = trained
    lines = (out / "tokenizer.model").read_text().splitlines()
    assert len(lines) == 1000
    tokens = []
    for rank, line in enumerate(lines):
        token, written_rank = line.split(" ")
        assert int(written_rank) == rank
        tokens.append(base64.b64decode(token))
    assert tokens[:256] == [bytes([b]) for b in range(256)]
    assert len(set(tokens)) == 1000 and all(len(t) >= 2 for t in tokens[256:])
    assert json.loads((out / "tokenizer_stats.json").read_text()) == stats


def test_specials_and_round_trip(trained):
    tok = Tokenizer.load(trained[0])
    assert (tok.num_base_tokens, tok.n_words) == (1000, 1256)
    assert (tok.bos_id, tok.eos_id, tok.eom_id, tok.eot_id, tok.pad_id) == (1000, 1001, 1008, 1009, 1004)
    assert tok.special_tokens["<|reserved_special_token_245|>"] == 1255
    text = "def main():\n    print('héllo 世界 🌍')  # never seen: ζ ж\n" + "".join(MULTILINGUAL)
    ids = tok.encode(text, bos=True, eos=True)
    assert ids[0] == 1000 and ids[-1] == 1001 and max(ids[1:-1]) < 1000
    assert tok.decode(ids[1:-1]) == text
    assert tok.encode("<|eot_id|>", allowed_special="all") == [1009]


def test_stats_report_compression(trained):
    _, stats = trained
    assert stats["num_base_tokens"] == 1000 and stats["vocab_size"] == 1256
    assert stats["train"]["docs"] > 150 and stats["train"]["bytes"] > 350_000
    heldout = stats["heldout"]
    assert heldout["docs"] >= 8
    assert heldout["chars_per_token"] > 2.0
    assert heldout["bytes_per_token"] >= heldout["chars_per_token"]  # non-ASCII documents take >1 byte/char
    assert heldout["chars_per_token"] == round(heldout["chars"] / heldout["tokens"], 4)
    check = stats["hf_segmentation_check"]
    assert check["texts"] > 0 and check["identical"] == check["texts"]


def test_segmentation_equals_hf_tokenizer(corpus, tmp_path):
    """Train once through pasture and once with plain `tokenizers`; the token bytes must agree."""
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    from pasture.documents import iter_documents
    from pasture.tokenizer import LLAMA3_PATTERN

    train_tokenizer(corpus, 800, tmp_path, holdout_fraction=0, show_progress=False)
    ours = Tokenizer.load(tmp_path / "tokenizer.model")

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator([d.text for d in iter_documents(corpus)], trainer=trainer)

    to_byte = {ch: b for b, ch in byte_level_alphabet().items()}
    samples = corpus_texts(limit_chars=60_000)[-40:] + [
        "class Foo(Bar):\n\tpass\r\n\n   x = 10_000_000\n", "It's 5 o'clock; WE'LL see.", "  \n\n\t ", *MULTILINGUAL]
    for text in samples:
        hf_pieces = [bytes(to_byte[c] for c in t) for t in hf.encode(text).tokens]
        our_pieces = [ours.token_bytes(i) for i in ours.encode(text)]
        assert our_pieces == hf_pieces, text[:60]
        assert b"".join(our_pieces) == text.encode("utf-8")


def test_max_bytes_caps_training_text(corpus, tmp_path):
    stats = train_tokenizer(corpus, 400, tmp_path, max_bytes=50_000, holdout_fraction=0.05, show_progress=False)
    assert 49_000 <= stats["train"]["bytes"] <= 50_000
    assert stats["num_base_tokens"] == 400


def test_bad_training_input(corpus, tmp_path):
    with pytest.raises(TokenizerError, match="vocab size 200 is too small"):
        train_tokenizer(corpus, 200, tmp_path)
    with pytest.raises(TokenizerError, match="holdout fraction"):
        train_tokenizer(corpus, 300, tmp_path, holdout_fraction=1.5)


def test_cli_train_encode_decode_stats(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "600", "--out", str(out),
                 "--holdout-fraction", "0.05", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "600 ranks + 256 special tokens" in printed and "chars/token" in printed

    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--json", "--bos", "hello world"]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert ids[0] == 600 and len(ids) >= 3

    assert main(["tokenizer", "decode", "--tokenizer", str(out), *map(str, ids[1:])]) == 0
    assert capsys.readouterr().out == "hello world\n"

    assert main(["tokenizer", "encode", "--tokenizer", "llama3", "Hello world"]) == 0
    assert capsys.readouterr().out == "9906 1917\n"
    assert main(["tokenizer", "decode", "[9906, 1917]"]) == 0
    assert capsys.readouterr().out == "Hello world\n"

    text_file = tmp_path / "a.txt"
    text_file.write_text("Hello world")
    assert main(["tokenizer", "stats", "--tokenizer", "llama3", "--input", str(text_file), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats == {"docs": 1, "chars": 11, "bytes": 11, "tokens": 2, "chars_per_token": 5.5, "bytes_per_token": 5.5}
    assert main(["tokenizer", "stats", "--tokenizer", str(out / "tokenizer.model"), "--input", str(corpus)]) == 0
    assert "chars/token" in capsys.readouterr().out


def test_cli_bad_input_is_one_line(corpus, tmp_path, capsys):
    bad = tmp_path / "tokenizer.model"
    bad.write_text("IQ== 0\nnot-a-valid-line\n")
    assert main(["tokenizer", "encode", "--tokenizer", str(bad), "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pasture: error: ") and f"{bad}:2:" in err

    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "10", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "pasture: error: vocab size 10 is too small: the 256 single bytes alone take 256 ranks\n"

    assert main(["tokenizer", "decode", "--tokenizer", "llama3", "12", "x7"]) == 2
    assert capsys.readouterr().err == "pasture: error: token id 'x7' is not an integer\n"

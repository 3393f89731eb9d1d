"""Llama 3 tokenizer: a tiktoken-format BPE file plus 256 special tokens.

Token ids match Meta's `llama_models.llama3.tokenizer.Tokenizer` exactly: the same
pre-tokenizer regex, the same special-token names and ids (base ranks first, then
the 256 specials), and the same input splitting (400,000-character chunks, runs of
whitespace or non-whitespace cut every 25,000 characters) that keeps tiktoken from
overflowing its stack on long inputs. tiktoken is the engine.
"""

from __future__ import annotations

import base64
import binascii
import importlib.resources
import os
import re
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import AbstractSet, Literal

import tiktoken

from pasture.errors import PastureError

# Llama 3's pre-tokenizer regex (character for character cl100k_base's).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

NUM_SPECIAL_TOKENS = 256
# The named specials at the front of the 256, in id order, as llama_models 0.3.0 names them
# (128011 is `<|image|>` there; the rest are `<|reserved_special_token_2..245|>`).
NAMED_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
)
SPECIAL_TOKEN_NAMES = NAMED_SPECIAL_TOKENS + tuple(
    f"<|reserved_special_token_{2 + i}|>" for i in range(NUM_SPECIAL_TOKENS - len(NAMED_SPECIAL_TOKENS))
)

# tiktoken panics on very long inputs; Meta encodes in chunks of this many characters...
MAX_ENCODE_CHARS = 400_000
# ...and cuts any run of whitespace or of non-whitespace every this many characters.
MAX_RUN_CHARS = 25_000
# A run longer than MAX_RUN_CHARS, matched only from its first character (the lookbehind
# keeps the search linear in the text length).
_LONG_RUN = re.compile(r"(?<!\S)\S{%d,}|(?<!\s)\s{%d,}" % (MAX_RUN_CHARS + 1, MAX_RUN_CHARS + 1))

LLAMA3_SPEC = "llama3"

SpecialSet = Literal["all"] | AbstractSet[str]


class TokenizerError(PastureError):
    """A tokenizer file that is missing or malformed, or ids that are not in the vocabulary."""


def resolve_tokenizer_path(spec: str | os.PathLike) -> Path:
    """Turn a `--tokenizer` value into a tokenizer file path.

    `llama3` means Meta's Llama 3 file shipped in the `llama-models` package; a file is taken
    as it is (a tiktoken `tokenizer.model`, a `tokenizer.json` or a `.gguf`); a folder means the
    first of `TOKENIZER_FILES` found in it, in its `tokenizer/` subfolder (a speedrun folder) or
    its parents (a checkpoint inside a run folder), else its one `.gguf` file.
    """
    if str(spec) == LLAMA3_SPEC:
        try:
            path = Path(str(importlib.resources.files("llama_models") / "llama3" / "tokenizer.model"))
        except ModuleNotFoundError:
            raise TokenizerError(
                "--tokenizer llama3 needs Meta's tokenizer.model from the llama-models package: "
                "pip install llama-models"
            ) from None
        if not path.is_file():
            raise TokenizerError(f"the installed llama-models package has no Llama 3 tokenizer.model at {path}")
        return path
    path = Path(spec)
    if path.is_dir():
        return _tokenizer_in_folder(path)
    if not path.is_file():
        raise TokenizerError(f"tokenizer file {path} does not exist")
    return path


TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")


def _tokenizer_in_folder(folder: Path) -> Path:
    for place in (folder, folder / "tokenizer", folder.parent, folder.parent.parent):
        for name in TOKENIZER_FILES:
            if (place / name).is_file():
                return place / name
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    raise TokenizerError(
        f"no tokenizer in {folder}: expected {' or '.join(TOKENIZER_FILES)} (here, in tokenizer/ or in a parent "
        f"run folder) or exactly one .gguf file, found {len(ggufs)}"
    )


def read_bpe_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Read a tiktoken BPE file (`<base64 token bytes> <rank>` per line) into mergeable ranks.

    Unlike tiktoken's own loader it checks the file: every line well formed, ranks
    0..n-1 each once, tokens unique, and all 256 single bytes present (byte-level BPE
    cannot encode text otherwise), so a bad file fails here with its line number
    rather than later inside tiktoken.
    """
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"tokenizer file {path} does not exist")
    ranks: dict[bytes, int] = {}
    line_of_rank: dict[int, int] = {}
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            fields = raw.decode("utf-8", errors="replace").split()
            if not fields:
                continue
            where = f"{path}:{line_number}"
            if len(fields) != 2:
                raise TokenizerError(f"{where}: expected '<base64 token> <rank>', got {len(fields)} fields")
            try:
                token = base64.b64decode(fields[0].encode("ascii"), validate=True)
            except (binascii.Error, ValueError, UnicodeEncodeError):
                raise TokenizerError(f"{where}: {fields[0][:40]!r} is not base64") from None
            if not (fields[1].isascii() and fields[1].isdigit()):
                raise TokenizerError(f"{where}: rank {fields[1][:40]!r} is not a non-negative integer")
            rank = int(fields[1])
            if not token:
                raise TokenizerError(f"{where}: empty token")
            if token in ranks:
                raise TokenizerError(f"{where}: token {token!r} already has rank {ranks[token]}")
            if rank in line_of_rank:
                raise TokenizerError(f"{where}: rank {rank} already used on line {line_of_rank[rank]}")
            ranks[token] = rank
            line_of_rank[rank] = line_number
    if not ranks:
        raise TokenizerError(f"{path}: no tokens (empty file)")
    if max(line_of_rank) != len(ranks) - 1:
        raise TokenizerError(f"{path}: ranks must run 0..{len(ranks) - 1} but the largest is {max(line_of_rank)}")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerError(
            f"{path}: not a byte-level BPE: {len(missing)} single bytes have no rank (first: {missing[0]:#04x})"
        )
    return ranks


def write_bpe_ranks(tokens: Sequence[bytes], path: str | os.PathLike) -> None:
    """Write tokens as a tiktoken BPE file, the rank of each being its position."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for rank, token in enumerate(tokens):
            f.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    os.replace(tmp, path)


def split_for_tiktoken(text: str) -> Iterator[str]:
    """Cut text into the pieces Meta hands to tiktoken one at a time.

    400,000-character chunks, each cut again wherever a run of whitespace or of
    non-whitespace reaches 25,000 characters (counting from the run's start within
    the chunk). Ordinary text comes back whole, found with one regex scan.
    """
    for start in range(0, len(text), MAX_ENCODE_CHARS):
        chunk = text[start : start + MAX_ENCODE_CHARS]
        if len(chunk) <= MAX_RUN_CHARS:  # too short to hold a long run: most documents
            yield chunk
            continue
        piece_start = 0
        for run in _LONG_RUN.finditer(chunk):
            for cut in range(run.start() + MAX_RUN_CHARS, run.end(), MAX_RUN_CHARS):
                yield chunk[piece_start:cut]
                piece_start = cut
        yield chunk[piece_start:]


class Tokenizer:
    """A Llama 3 style tokenizer: byte-level BPE ranks + 256 special tokens.

    `special_tokens` maps each special token's name to its id (number of base ranks +
    its index); `stop_tokens` are the ids that end generation (`<|end_of_text|>`,
    `<|eom_id|>`, `<|eot_id|>`), and `pad_id` is `<|finetune_right_pad_id|>`, as in
    Llama 3.1.
    """

    def __init__(self, mergeable_ranks: dict[bytes, int], name: str = "tokenizer") -> None:
        self.name = name
        self.mergeable_ranks = mergeable_ranks
        self.num_base_tokens = len(mergeable_ranks)
        self.special_tokens: dict[str, int] = {
            token: self.num_base_tokens + i for i, token in enumerate(SPECIAL_TOKEN_NAMES)
        }
        self.model: tiktoken.Encoding = tiktoken.Encoding(
            name=name,
            pat_str=LLAMA3_PATTERN,
            mergeable_ranks=mergeable_ranks,
            special_tokens=self.special_tokens,
        )
        self.n_words = self.num_base_tokens + len(self.special_tokens)
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.eot_id = self.special_tokens["<|eot_id|>"]
        self.eom_id = self.special_tokens["<|eom_id|>"]
        self.pad_id = self.special_tokens["<|finetune_right_pad_id|>"]
        self.python_tag_id = self.special_tokens["<|python_tag|>"]
        self.start_header_id = self.special_tokens["<|start_header_id|>"]
        self.end_header_id = self.special_tokens["<|end_header_id|>"]
        self.stop_tokens = [self.eos_id, self.eom_id, self.eot_id]
        self.add_bos = True  # Llama 3 prompts and documents start with <|begin_of_text|>
        self.chat_template: str | None = None  # Llama 3 dialogs are encoded by ChatFormat

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Any tokenizer pasture reads, by what `path` holds (see `resolve_tokenizer_path`):
        a tiktoken `tokenizer.model` (or `llama3`), a Hugging Face `tokenizer.json`, a `.gguf`
        file's embedded vocabulary, or a model / run folder holding one of them."""
        resolved = resolve_tokenizer_path(path)
        if resolved.name == "tokenizer.json" or resolved.suffix in (".json", ".gguf"):
            # imported here: hf.py subclasses this class, so it cannot be imported at the top
            from pasture.tokenizer.hf import HFTokenizer

            if resolved.suffix == ".gguf":
                return HFTokenizer.from_gguf(resolved)
            return HFTokenizer.from_tokenizer_json(resolved)
        return Tokenizer(read_bpe_ranks(resolved), name=str(resolved))

    @property
    def vocab_size(self) -> int:
        """Rows the embedding needs: base ranks + 256 special tokens."""
        return self.n_words

    def _encode_piece(self, piece: str, allowed_special: SpecialSet, disallowed_special: SpecialSet | Collection[str]):
        if not allowed_special and not disallowed_special:
            return self.model.encode_ordinary(piece)  # same ids as encode(), without the special-token scan
        return self.model.encode(piece, allowed_special=allowed_special, disallowed_special=disallowed_special)

    def encode(
        self,
        text: str,
        bos: bool = False,
        eos: bool = False,
        *,
        allowed_special: SpecialSet = frozenset(),
        disallowed_special: SpecialSet | Collection[str] = (),
    ) -> list[int]:
        """Token ids of `text`, exactly as Meta's tokenizer gives them.

        Special-token strings in the text are plain text unless named in
        `allowed_special` (or it is "all"); `disallowed_special` ones raise, as in tiktoken.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        return self._with_bos_eos(self._encode_texts([text], allowed_special, disallowed_special, 1)[0], bos, eos)

    def encode_batch(
        self,
        texts: Sequence[str],
        bos: bool = False,
        eos: bool = False,
        *,
        allowed_special: SpecialSet = frozenset(),
        disallowed_special: SpecialSet | Collection[str] = (),
        num_threads: int = 8,
    ) -> list[list[int]]:
        """`encode` for many texts at once, on the engine's thread pool."""
        encoded = self._encode_texts(texts, allowed_special, disallowed_special, num_threads)
        return [self._with_bos_eos(ids, bos, eos) for ids in encoded]

    def _with_bos_eos(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        for wanted, token_id, name in ((bos, self.bos_id, "BOS"), (eos, self.eos_id, "EOS")):
            if wanted and token_id is None:
                raise TokenizerError(f"{self.name} has no {name} token")
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def _encode_texts(
        self, texts: Sequence[str], allowed_special: SpecialSet, disallowed_special: SpecialSet | Collection[str],
        num_threads: int,
    ) -> list[list[int]]:
        """Ids of each text without BOS/EOS: tiktoken on Meta's pieces (it releases the GIL)."""
        pieces: list[str] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            for piece in split_for_tiktoken(text):
                pieces.append(piece)
                owner.append(i)
        if len(pieces) == 1:
            encoded = [self._encode_piece(pieces[0], allowed_special, disallowed_special)]
        elif not allowed_special and not disallowed_special:
            encoded = self.model.encode_ordinary_batch(pieces, num_threads=num_threads)
        else:
            encoded = self.model.encode_batch(
                pieces,
                num_threads=num_threads,
                allowed_special=allowed_special,
                disallowed_special=disallowed_special,
            )
        out: list[list[int]] = [[] for _ in texts]
        for i, ids in zip(owner, encoded):
            out[i].extend(ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids; bytes that are not valid UTF-8 become U+FFFD."""
        try:
            return self.model.decode(list(ids))
        except (KeyError, OverflowError):
            bad = next((i for i in ids if not 0 <= int(i) < self.n_words), None)
            raise TokenizerError(f"token id {bad} is not in the vocabulary (0..{self.n_words - 1})") from None

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (special tokens give their name)."""
        return self.model.decode_single_token_bytes(token_id)

"""Byte-level BPE tokenizers that are not in tiktoken format, behind pasture's `Tokenizer` interface.

Two sources, one engine (the `tokenizers` library):
- a Hugging Face `tokenizer.json`, with `tokenizer_config.json` (BOS/EOS, `add_bos_token`, the
  chat template; or `chat_template.jinja`) and `generation_config.json` (extra stop ids) beside it;
- the vocabulary a GGUF file embeds (`tokenizer.ggml.tokens`, `merges`, `token_type`, `pre`).
  llama.cpp picks its pre-tokenizer regex from `tokenizer.ggml.pre`; `PRE_TOKENIZERS` holds the
  same splits as `tokenizers` pre-tokenizers for the byte-level types pasture supports.

`encode` keeps the tiktoken tokenizer's contract: special-token strings in the text are plain
text unless named in `allowed_special` ("all" gives transformers' ids for rendered chat markup).
BOS is never added behind the caller's back: `encode(text, bos=tokenizer.add_bos)` gives what the
model's metadata asks for, and chat templates that write BOS themselves are encoded without it.

`as_hf_tokenizer` turns a tiktoken tokenizer into this form (ranks become merges), so every
tokenizer can be written into a GGUF (`gguf_fields`) or as a `tokenizer.json` folder (`save`).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Collection, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import gguf
import tokenizers

from pasture.tokenizer.tokenizer import LLAMA3_PATTERN, SpecialSet, Tokenizer, TokenizerError

# GGUF token types (llama.cpp's llama_token_type)
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
_GPT2_BYTE_LEVEL = {**_BYTE_LEVEL, "use_regex": True}
# llama.cpp `tokenizer.ggml.pre` -> (tokenizers pre-tokenizer, ignore_merges). llama-bpe is Llama 3's
# regex, whose whole-word lookup (ignore_merges) tiktoken and llama.cpp both do; smollm splits every
# digit, then GPT-2's regex.
PRE_TOKENIZERS: dict[str, tuple[dict[str, Any], bool]] = {
    "llama-bpe": ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
        _BYTE_LEVEL]}, True),
    "smollm": ({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _GPT2_BYTE_LEVEL]}, False),
    "gpt2": (_GPT2_BYTE_LEVEL, False),
}
PRE_ALIASES = {"llama3": "llama-bpe", "llama-v3": "llama-bpe", "default": "gpt2"}

# Control tokens that end a turn in llama.cpp whatever the metadata says (llama-vocab.cpp's list).
END_OF_TURN_TEXTS = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                     "<|end_of_text|>", "<EOT>")

# Llama 3's chat format as a Jinja template, for files (GGUF, tokenizer_config.json) written from a
# tiktoken tokenizer; pasture itself renders Llama 3 dialogs with ChatFormat.
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + ('ipython' if message['role'] == 'tool' else message['role']) + '<|end_header_id|>\n\n' }}"
    "{{ message['content'] }}{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, in which byte-level vocabularies are spelled."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def spell_bytes(token: bytes) -> str:
    """A token's bytes in the byte-level alphabet (`b" the"` -> `"Ġthe"`)."""
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def _merge_strings(merges: Sequence[Any]) -> list[str]:
    """Merges as llama.cpp stores them ("a b"), from either tokenizer.json spelling."""
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[str, str]]:
    """BPE merges equivalent to tiktoken ranks: every split of a token into two ranked tokens,
    ordered by the merged token's rank, then by the ranks of its parts."""
    found: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                found.append((rank, ranks[left], ranks[right], left, right))
    found.sort()
    return [(spell_bytes(left), spell_bytes(right)) for *_, left, right in found]


def _added_token(token_id: int, content: str, special: bool) -> dict[str, Any]:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def build_spec(
    tokens: Sequence[str], merges: Sequence[str | Sequence[str]], token_types: Sequence[int] | None, pre: str
) -> dict[str, Any]:
    """A tokenizer.json for a byte-level BPE vocabulary (tokens in id order, spelled byte-level)."""
    pre = PRE_ALIASES.get(pre, pre)
    if pre not in PRE_TOKENIZERS:
        raise TokenizerError(
            f"pre-tokenizer {pre!r} is not supported; supported: {', '.join([*PRE_TOKENIZERS, *PRE_ALIASES])}"
        )
    pre_tokenizer, ignore_merges = PRE_TOKENIZERS[pre]
    types = list(token_types) if token_types is not None else [TOKEN_NORMAL] * len(tokens)
    added = [_added_token(i, t, kind == TOKEN_CONTROL) for i, (t, kind) in enumerate(zip(tokens, types))
             if kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": copy.deepcopy(pre_tokenizer),
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) if isinstance(m, str) else list(m) for m in merges]},
    }


def _pre_type(spec: dict[str, Any]) -> str | None:
    """The llama.cpp pre-tokenizer name of a tokenizer.json's pre-tokenizer, if it is one we know."""
    for name, (pre_tokenizer, _) in PRE_TOKENIZERS.items():
        if spec.get("pre_tokenizer") == pre_tokenizer:
            return name
    text = json.dumps(spec.get("pre_tokenizer"))
    if "Digits" in text and '"individual_digits": true' in text and "ByteLevel" in text:
        return "smollm"
    if LLAMA3_PATTERN.replace("\\", "\\\\") in text:
        return "llama-bpe"
    return None


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class HFTokenizer(Tokenizer):
    """A byte-level BPE run by `tokenizers`, with the special ids and stop ids of its model.

    Same interface as the tiktoken `Tokenizer`; ids that a vocabulary lacks (`eot_id` outside
    Llama 3, say) are None.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        eot_id: int | None = None,
        eom_id: int | None = None,
        pad_id: int | None = None,
        add_bos: bool = False,
        chat_template: str | None = None,
        extra_stop_ids: Sequence[int] = (),
        pre: str | None = None,
        name: str = "tokenizer",
    ) -> None:
        self.name = name
        self.spec = spec
        try:
            self.backend = tokenizers.Tokenizer.from_str(json.dumps(spec))
            # the same tokenizer without its special tokens: their text is then plain text
            plain = dict(spec, added_tokens=[t for t in spec.get("added_tokens", []) if not t.get("special")])
            self.plain_backend = tokenizers.Tokenizer.from_str(json.dumps(plain))
        except Exception as e:  # tokenizers raises a bare Exception for a malformed spec
            raise TokenizerError(f"{name}: not a usable tokenizer: {e}") from None
        self.special_tokens = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        self.n_words = self.backend.get_vocab_size(with_added_tokens=True)
        self.num_base_tokens = self.backend.get_vocab_size(with_added_tokens=False)
        self.bos_id, self.eos_id, self.eot_id, self.eom_id, self.pad_id = bos_id, eos_id, eot_id, eom_id, pad_id
        self.add_bos = add_bos
        self.chat_template = chat_template
        self.pre = pre if pre is not None else _pre_type(spec)
        self.python_tag_id = self.special_tokens.get("<|python_tag|>")
        self.start_header_id = self.special_tokens.get("<|start_header_id|>")
        self.end_header_id = self.special_tokens.get("<|end_header_id|>")
        stops = [eos_id, eot_id, eom_id, *extra_stop_ids]
        self.stop_tokens = list(dict.fromkeys(i for i in stops if i is not None))
        self._special_pattern = re.compile("|".join(re.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True))) \
            if self.special_tokens else None

    # ------------------------------------------------------------ loading

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike) -> "HFTokenizer":
        """A Hugging Face tokenizer.json, with tokenizer_config.json / generation_config.json beside it."""
        path = Path(path)
        spec = _read_json(path)
        folder = path.parent
        config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
        vocab = {**spec.get("model", {}).get("vocab", {}), **{t["content"]: t["id"] for t in spec.get("added_tokens", [])}}

        def token_id(name: str) -> int | None:
            content = _token_content(config.get(name))
            return vocab.get(content) if content is not None else None

        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        stop_ids: list[int] = []
        if (folder / "generation_config.json").is_file():
            eos = _read_json(folder / "generation_config.json").get("eos_token_id")
            stop_ids = [eos] if isinstance(eos, int) else list(eos or [])
        bos_id = token_id("bos_token")
        tokenizer = cls(
            spec, bos_id=bos_id, eos_id=token_id("eos_token"), pad_id=token_id("pad_token"),
            eot_id=vocab.get("<|eot_id|>"), eom_id=vocab.get("<|eom_id|>"),
            chat_template=template, extra_stop_ids=stop_ids, name=str(path),
        )
        if "add_bos_token" in config:
            tokenizer.add_bos = bool(config["add_bos_token"]) and bos_id is not None
        else:  # what the post-processor does when transformers encodes with add_special_tokens=True
            first = tokenizer.backend.encode("x", add_special_tokens=True).ids[:1]
            tokenizer.add_bos = bos_id is not None and first == [bos_id]
        return tokenizer

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> "HFTokenizer":
        """The tokenizer embedded in a GGUF file (byte-level BPE: `tokenizer.ggml.model` gpt2)."""
        try:
            reader = gguf.GGUFReader(path)
        except (ValueError, OSError) as e:
            raise TokenizerError(f"{path}: not a readable GGUF file: {e}") from None

        def value(key: str, default: Any = None) -> Any:
            field = reader.fields.get(f"tokenizer.{key}")
            return default if field is None else field.contents()

        kind = value("ggml.model")
        if kind != "gpt2":
            raise TokenizerError(
                f"{path}: tokenizer.ggml.model is {kind!r}; pasture reads byte-level BPE GGUF vocabularies (gpt2)"
            )
        tokens, types = value("ggml.tokens"), value("ggml.token_type")
        pre = PRE_ALIASES.get(value("ggml.pre", "default"), value("ggml.pre", "default"))
        spec = build_spec(tokens, value("ggml.merges", []), types, pre)
        control = {t for t, kind in zip(tokens, types or ()) if kind == TOKEN_CONTROL}
        ids = {t: i for i, t in enumerate(tokens)}
        return cls(
            spec,
            bos_id=value("ggml.bos_token_id"),
            eos_id=value("ggml.eos_token_id"),
            eot_id=value("ggml.eot_token_id"),
            eom_id=value("ggml.eom_token_id"),
            pad_id=value("ggml.padding_token_id"),
            add_bos=bool(value("ggml.add_bos_token", pre == "llama-bpe")),
            chat_template=value("chat_template"),
            extra_stop_ids=[ids[t] for t in END_OF_TURN_TEXTS if t in control],
            pre=pre,
            name=str(path),
        )

    # ------------------------------------------------------------ the Tokenizer interface

    def _check_disallowed(self, text: str, allowed: SpecialSet, disallowed: SpecialSet | Collection[str]) -> None:
        if disallowed == "all":
            disallowed = set(self.special_tokens) - (set(self.special_tokens) if allowed == "all" else set(allowed))
        for token in disallowed:
            if token in text:
                raise ValueError(f"text contains the special token {token!r}, which is disallowed")

    def _encode_text(self, text: str, allowed_special: SpecialSet) -> list[int]:
        if allowed_special == "all":
            return self.backend.encode(text, add_special_tokens=False).ids
        if not allowed_special or self._special_pattern is None:
            return self.plain_backend.encode(text, add_special_tokens=False).ids
        ids: list[int] = []
        start = 0
        for match in self._special_pattern.finditer(text):
            if match.group() not in allowed_special:
                continue
            ids.extend(self.plain_backend.encode(text[start:match.start()], add_special_tokens=False).ids)
            ids.append(self.special_tokens[match.group()])
            start = match.end()
        ids.extend(self.plain_backend.encode(text[start:], add_special_tokens=False).ids)
        return ids

    def encode(
        self,
        text: str,
        bos: bool = False,
        eos: bool = False,
        *,
        allowed_special: SpecialSet = frozenset(),
        disallowed_special: SpecialSet | Collection[str] = (),
    ) -> list[int]:
        """Token ids of `text`; special-token strings are plain text unless in `allowed_special`."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        self._check_disallowed(text, allowed_special, disallowed_special)
        return self._with_bos_eos(self._encode_text(text, allowed_special), bos, eos)

    def _with_bos_eos(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        for wanted, token_id, name in ((bos, self.bos_id, "BOS"), (eos, self.eos_id, "EOS")):
            if wanted and token_id is None:
                raise TokenizerError(f"{self.name} has no {name} token")
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

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
        """`encode` for many texts; plain text runs on the `tokenizers` thread pool."""
        if allowed_special or disallowed_special:
            return [self.encode(t, bos, eos, allowed_special=allowed_special, disallowed_special=disallowed_special)
                    for t in texts]
        encoded = self.plain_backend.encode_batch(list(texts), add_special_tokens=False)
        return [self._with_bos_eos(e.ids, bos, eos) for e in encoded]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids; bytes that are not valid UTF-8 become U+FFFD."""
        bad = next((i for i in ids if not 0 <= int(i) < self.n_words), None)
        if bad is not None:
            raise TokenizerError(f"token id {bad} is not in the vocabulary (0..{self.n_words - 1})")
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (special and added tokens give their text)."""
        token = self.backend.id_to_token(int(token_id))
        if token is None:
            raise TokenizerError(f"token id {token_id} is not in the vocabulary (0..{self.n_words - 1})")
        table = unicode_to_byte()
        if token_id in self.special_tokens.values() or any(c not in table for c in token):
            return token.encode("utf-8")
        return bytes(table[c] for c in token)

    # ------------------------------------------------------------ writing

    def tokens_in_id_order(self) -> list[str]:
        vocab = self.backend.get_vocab(with_added_tokens=True)
        tokens = [""] * len(vocab)
        for token, token_id in vocab.items():
            if token_id >= len(tokens):
                raise TokenizerError(f"{self.name}: token ids are not contiguous (id {token_id} of {len(vocab)})")
            tokens[token_id] = token
        return tokens

    def gguf_fields(self) -> dict[str, Any]:
        """The `tokenizer.*` metadata llama.cpp reads (gpt2-type BPE)."""
        if self.pre is None:
            raise TokenizerError(
                f"{self.name}: its pre-tokenizer is none llama.cpp knows by name ({', '.join(PRE_TOKENIZERS)})"
            )
        tokens = self.tokens_in_id_order()
        added = {t["id"]: t for t in self.spec.get("added_tokens", [])}
        types = [(TOKEN_CONTROL if added[i].get("special") else TOKEN_USER_DEFINED) if i in added else TOKEN_NORMAL
                 for i in range(len(tokens))]
        fields: dict[str, Any] = {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": self.pre,
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": _merge_strings(self.spec["model"].get("merges", [])),
            "tokenizer.ggml.add_bos_token": self.add_bos,
        }
        for key, token_id in (("bos", self.bos_id), ("eos", self.eos_id), ("eot", self.eot_id),
                              ("eom", self.eom_id), ("padding", self.pad_id)):
            if token_id is not None:
                fields[f"tokenizer.ggml.{key}_token_id"] = int(token_id)
        if self.chat_template:
            fields["tokenizer.chat_template"] = self.chat_template
        return fields

    def save(self, folder: str | os.PathLike) -> Path:
        """Write tokenizer.json, tokenizer_config.json and generation_config.json (stop ids) into `folder`."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tokenizer.json").write_text(json.dumps(self.spec, ensure_ascii=False) + "\n")
        tokens = self.tokens_in_id_order()
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": self.add_bos,
                                  "clean_up_tokenization_spaces": False}
        for name, token_id in (("bos_token", self.bos_id), ("eos_token", self.eos_id), ("pad_token", self.pad_id)):
            if token_id is not None:
                config[name] = tokens[token_id]
        if self.chat_template:
            config["chat_template"] = self.chat_template
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        generation = {"eos_token_id": self.stop_tokens}
        if self.bos_id is not None:
            generation["bos_token_id"] = self.bos_id
        (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: not readable JSON: {e}") from None


def as_hf_tokenizer(tokenizer: Tokenizer) -> HFTokenizer:
    """`tokenizer` itself, or a tiktoken tokenizer rebuilt as a byte-level BPE with the same ids."""
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer
    ranks = tokenizer.mergeable_ranks
    tokens = [spell_bytes(t) for t, _ in sorted(ranks.items(), key=lambda item: item[1])]
    specials = sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
    merges = [" ".join(pair) for pair in merges_from_ranks(ranks)]
    spec = build_spec(tokens + [name for name, _ in specials], merges,
                      [TOKEN_NORMAL] * len(tokens) + [TOKEN_CONTROL] * len(specials), "llama-bpe")
    return HFTokenizer(
        spec, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, eot_id=tokenizer.eot_id, eom_id=tokenizer.eom_id,
        pad_id=tokenizer.pad_id, add_bos=True, chat_template=LLAMA3_CHAT_TEMPLATE, pre="llama-bpe",
        name=getattr(tokenizer.model, "name", "tiktoken"),
    )

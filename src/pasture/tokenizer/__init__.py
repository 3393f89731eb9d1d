"""Tokenizer stage: Llama 3 tiktoken BPE (load, encode, decode), chat format, BPE training."""

from pasture.tokenizer.chat_format import ChatFormat, ChatFormatError, EncodedChat, Message, ToolCall
from pasture.tokenizer.tokenizer import (
    LLAMA3_PATTERN,
    NUM_SPECIAL_TOKENS,
    SPECIAL_TOKEN_NAMES,
    Tokenizer,
    TokenizerError,
    find_tokenizer,
    read_bpe_ranks,
    resolve_tokenizer_path,
    write_bpe_ranks,
)
from pasture.tokenizer.train import measure_compression, train_tokenizer

__all__ = [
    "LLAMA3_PATTERN",
    "NUM_SPECIAL_TOKENS",
    "SPECIAL_TOKEN_NAMES",
    "ChatFormat",
    "ChatFormatError",
    "EncodedChat",
    "Message",
    "ToolCall",
    "Tokenizer",
    "TokenizerError",
    "find_tokenizer",
    "measure_compression",
    "read_bpe_ranks",
    "resolve_tokenizer_path",
    "train_tokenizer",
    "write_bpe_ranks",
]

"""Tokenizer stage: Llama 3 tiktoken BPE (load, encode, decode), Hugging Face and GGUF
tokenizers behind the same interface, chat format and templates, BPE training.

Importing this package is cheap: tiktoken and tokenizers are imported when a
tokenizer is loaded or trained.
"""

from pasture.tokenizer.chat_format import ChatFormat, ChatFormatError, EncodedChat, Message, ToolCall
from pasture.tokenizer.chat_template import ChatTemplate, chat_format_for
from pasture.tokenizer.hf import HFTokenizer, as_hf_tokenizer
from pasture.tokenizer.tokenizer import (
    LLAMA3_PATTERN,
    NUM_SPECIAL_TOKENS,
    SPECIAL_TOKEN_NAMES,
    Tokenizer,
    TokenizerError,
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
    "ChatTemplate",
    "EncodedChat",
    "HFTokenizer",
    "Message",
    "ToolCall",
    "Tokenizer",
    "TokenizerError",
    "as_hf_tokenizer",
    "chat_format_for",
    "measure_compression",
    "read_bpe_ranks",
    "resolve_tokenizer_path",
    "train_tokenizer",
    "write_bpe_ranks",
]

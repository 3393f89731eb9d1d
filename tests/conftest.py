"""Fixtures shared by several test files."""

import pytest

from memorized_model import byte_tokenizer, memorized_model


@pytest.fixture(scope="session")
def serve_tokenizer():
    return byte_tokenizer()


@pytest.fixture(scope="session")
def memorized(serve_tokenizer):
    """The served model that learned exact replies (trained once per test session)."""
    return memorized_model(serve_tokenizer)

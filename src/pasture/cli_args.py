"""Argument types shared by several commands."""

from __future__ import annotations

import argparse


def byte_size(text: str) -> int:
    """`500000`, `64K`, `100M`, `2G` -> bytes (decimal units)."""
    units = {"K": 10**3, "M": 10**6, "G": 10**9}
    text = text.strip().upper().removesuffix("B")
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500000, 64K, 100M, 2G)") from None

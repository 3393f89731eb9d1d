"""Build the token folder that `benchmarks/convergence.py` trains on, for carrying to the GPU machine.

    python benchmarks/prepare_gpu_tokens.py [--out .gpu-tokens] [--max-bytes 18M] [--val-fraction 0.02]

The lent GPU machine has no registry, no llama-models (Meta's tokenizer file) and none of
pasture's curation extras, so the tokens are made here: text already on this machine
(`pasture.data.gather`: the standard library's source, installed packages' docs, man pages),
tokenized with Meta's Llama 3 tokenizer (vocabulary 128,256, what the 1B preset expects) into
the `pasture tokenize` format. No curation: the check compares training variants on the same
tokens, so the tokens need to be real text, not filtered web text.

The folder holds a `.gitignore` of `*`, so git (and the device tool) see it as ignored
without editing the repository's .gitignore or `.git/info/exclude` (which a worktree shares
with its main checkout); name it in the device call's `carry`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pasture.cli_args import byte_size

STEP_TOKENS = 8 * 2048  # one step of the convergence check: 8 sequences of 2048 tokens


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def prepare(out: Path, max_bytes: int, val_fraction: float, seed: int, progress: bool) -> dict:
    """Gather text into a temporary folder, tokenize it into `out`; the tokenize summary."""
    from pasture.data.gather import default_roots, gather
    from pasture.train.tokenize import tokenize_documents

    with tempfile.TemporaryDirectory(prefix="pasture-gather-") as sources:
        gathered = gather(default_roots(), Path(sources), max_bytes, seed=seed, progress=progress)
        summary = tokenize_documents(sources, "llama3", out, val_fraction=val_fraction, overwrite=True,
                                     progress=progress)
    (out / ".gitignore").write_text("*\n")
    return {**summary, "gathered_bytes": gathered["bytes"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".gpu-tokens"))
    parser.add_argument("--max-bytes", type=byte_size, default=byte_size("18M"),
                        help="text to gather (Llama 3 takes about 4 bytes a token here; default 18M)")
    parser.add_argument("--val-fraction", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    summary = prepare(args.out, args.max_bytes, args.val_fraction, args.seed, not args.quiet)
    train, val = summary["splits"]["train"], summary["splits"]["val"]
    size = folder_bytes(args.out)
    print(f"{args.out}: {summary['gathered_bytes'] / 1e6:.1f} MB of text -> {train['tokens']:,} train tokens "
          f"({train['documents']:,} docs), {val['tokens']:,} val tokens ({val['documents']:,} docs); "
          f"{size / 2**20:.1f} MiB on disk; {train['tokens'] // STEP_TOKENS} steps of 8 x 2048 before a repeat")
    return 0


if __name__ == "__main__":
    sys.exit(main())

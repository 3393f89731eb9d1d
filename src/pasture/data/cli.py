"""`pasture curate RECIPE [section.key=value ...]` and `pasture curate train-quality ...`.

RECIPE is a TOML file or a shipped name (`web` -> recipes/curate/web.toml). The word
`train-quality` trains the quality classifier of `pasture.data.filters.quality`, from
labelled documents or from a model as teacher. `pasture curate RECIPE --help` lists the recipe's sections
and keys with their values (the recipe's, else the defaults) and the recipe's comments.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pasture import runs
from pasture.data.curate import run_curation
from pasture.data.filters.quality import ClassifierError, train_quality_classifier, train_quality_from_teacher
from pasture.data.recipe import load_recipe, parse_recipe
from pasture.errors import PastureError
from pasture.runtime import resolve_device
from pasture.tokenizer import Tokenizer
from pasture.train.validation import text_losses

HELP_FLAGS = ("-h", "--help")
SECTION_HELP = {
    "input": "what to read: WARC/WARC.gz, folders of .html, documents (JSONL, JSONL.zst, Parquet, .txt)",
    "output": "where the kept documents, rejects and statistics go",
    "extract": "HTML to text",
    "url_dedup": "keep the most recent crawl of each URL",
    "minhash": "near-duplicate removal: MinHash LSH over word n-grams, connected components",
    "line_dedup": "remove lines seen more than max_count times per bucket of bucket_docs documents",
    "engine": "where tasks run: local processes or Ray",
    "mix": "sample the output into a mix by meta['domain'] (pasture.data.mix.write_mix)",
}
_SECTION_RE = re.compile(r"^\s*\[([^\]]+)\]")
_KEY_RE = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*=")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "curate",
        help="curate web data: extract, de-duplicate (URL, MinHash, line), filter, mix",
        description="Run a curation recipe: `pasture curate web input.paths='[\"crawl/\"]' output.dir=out`. "
        "Every recipe key can be overridden as section.key=value (e.g. minhash.bands=20 engine.kind=ray). "
        "`pasture curate RECIPE --help` lists the recipe's sections and keys with their values. "
        "`pasture curate train-quality ...` trains the model-based quality classifier.",
    )
    parser.add_argument("recipe", metavar="RECIPE", help="recipe TOML file, a shipped recipe name (web), "
                        "or the word train-quality")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="KEY=VALUE",
                        help="recipe overrides, section.key=value")
    parser.set_defaults(func=curate_command)
    return parser


def _toml(value: Any) -> str:
    """A value as it would be written in the recipe (None: unset, the stage's own default applies)."""
    if value is None:
        return "(default)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }" if value else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else str(value)


def _comment(line: str) -> str:
    """The `# comment` at the end of a TOML line (a `#` inside a string is not one)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[i + 1 :].strip()
    return ""


def _recipe_comments(path: Path) -> dict[tuple[str, str], str]:
    """(section, key) -> the comment written after that key in the recipe file."""
    comments, section = {}, ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := _SECTION_RE.match(line):
            section = m.group(1).strip()
        elif (m := _KEY_RE.match(line)) and _comment(line):
            comments[(section, m.group(1))] = _comment(line)
    return comments


def _first_sentence(doc: str) -> str:
    paragraph = " ".join(doc.split("\n\n")[0].split())
    return paragraph.split(". ")[0].rstrip(".") + "."


def _parameters(fn: Callable, skip: int = 0) -> dict[str, Any]:
    """Keyword parameters of `fn` (after the first `skip`) and their defaults, those a recipe can set."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    return {p.name: None if p.default is inspect.Parameter.empty else p.default for p in params
            if p.name != "self" and p.kind is not p.VAR_KEYWORD and not callable(p.default)}


def recipe_help(name_or_path: str, overrides: list[str] = ()) -> str:
    """Every section of a recipe and every key it can set, with the value this recipe (and `overrides`) gives it."""
    # lazy: this module is imported for `pasture --help`, which must stay fast
    from pasture.data.mix import write_mix
    from pasture.data.recipe import OWN_SECTIONS, filter_registry, load_recipe, recipe_dir

    recipe = load_recipe(name_or_path, list(overrides))
    path = Path(name_or_path) if Path(name_or_path).is_file() else Path(recipe_dir()) / f"{name_or_path}.toml"
    comments = _recipe_comments(path)
    registry = filter_registry() or {}
    lines = [f"pasture curate {name_or_path} [section.key=value ...]", f"recipe: {path}", "",
             "Sections run in this order; set any key with section.key=value (values are TOML literals),",
             "switch a filter section on or off with section.enabled=true|false.", ""]
    sections = list(recipe) + [name for name in OWN_SECTIONS if name not in recipe]
    for name in sections:
        given = recipe.get(name, {})
        if name in OWN_SECTIONS:
            fields = {f.name: (f.default if f.default is not dataclasses.MISSING
                               else f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
                      for f in dataclasses.fields(OWN_SECTIONS[name])}
            about = SECTION_HELP.get(name, "")
        elif name == "mix":
            fields, about = {"enabled": False, **_parameters(write_mix, skip=2)}, SECTION_HELP["mix"]
        elif name in registry:
            stage = registry[name]
            fields = {"enabled": True, **_parameters(stage.__init__)}
            about = f"{_first_sentence(inspect.getdoc(stage) or '')} ({stage.__module__}.{stage.__name__})"
        else:
            fields, about = {}, "(not a known section)"
        lines.append(f"[{name}]" + (f"  {about}" if about else ""))
        keys = {**fields, **given}
        width = min(max((len(k) + len(_toml(v)) for k, v in keys.items()), default=0) + 5, 40)
        for key, value in keys.items():
            text = f"  {key} = {_toml(value)}"
            note = comments.get((name, key), "")
            lines.append(f"{text:<{width}} # {note}" if note else text)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def curate_command(args: argparse.Namespace) -> int:
    if args.recipe == "train-quality":
        return train_quality_command(list(args.overrides))
    if any(o in HELP_FLAGS for o in args.overrides):
        print(recipe_help(args.recipe, [o for o in args.overrides if o not in HELP_FLAGS]), end="")
        return 0

    config = parse_recipe(load_recipe(args.recipe, args.overrides))
    stats = run_curation(config)
    stages = stats["stages"]
    first = next(iter(stages.values()), {"docs_in": 0})
    kept = stages.get("output", {"docs_out": 0, "bytes_out": 0})
    print(json.dumps({"output": config.output.dir, "documents_read": first["docs_in"],
                      "documents_kept": kept["docs_out"], "megabytes_kept": round(kept["bytes_out"] / 1e6, 3),
                      "seconds": round(stats["phase_seconds"]["total"], 2)}))
    print(f"stats: {config.output.dir}/stats.md")
    return 0


class _RaisingParser(argparse.ArgumentParser):
    """argparse that raises a PastureError instead of exiting, so callers see one error type."""

    def error(self, message: str) -> None:
        raise ClassifierError(f"{self.prog}: {message}")


def train_quality_command(argv: list[str]) -> int:
    """`pasture curate train-quality (--positive DOCS --negative DOCS | --teacher CKPT --unlabeled DOCS) --out DIR`."""
    parser = _RaisingParser(
        prog="pasture curate train-quality",
        description="Train the fastText-style quality classifier that the `quality` curate stage applies, "
        "from positive and negative documents, or from unlabeled documents labelled by a pasture model as "
        "teacher (its most and least predictable documents, as Llama 3 labelled with Llama 2).",
    )
    parser.add_argument("--positive", nargs="+", help="documents of the quality to keep (files, folders, globs)")
    parser.add_argument("--negative", nargs="+", help="documents to filter out, e.g. random web pages")
    parser.add_argument("--teacher", help="a pasture checkpoint or run folder that labels --unlabeled by perplexity")
    parser.add_argument("--unlabeled", nargs="+", help="documents for the teacher to label")
    parser.add_argument("--teacher-tokenizer", help="the teacher's tokenizer (default: the one in its run folder)")
    parser.add_argument("--teacher-fraction", type=float, default=0.3,
                        help="share of documents labelled high (lowest loss) and low (highest loss) each")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--epochs", type=int, default=5, help="most passes over the training documents")
    parser.add_argument("--patience", type=int, default=3,
                        help="early stopping: keep the epoch with the best held-out accuracy (ties: lower loss), "
                        "and stop after this many epochs without improvement; 0 trains every epoch and keeps the "
                        "last (small or noisy training sets are memorised within a few epochs)")
    parser.add_argument("--dim", type=int, default=16, help="embedding size")
    parser.add_argument("--buckets", type=int, default=2**18, help="hash buckets for word uni+bigrams")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--valid-fraction", type=float, default=0.1,
                        help="share of each label held out to pick the epoch (see --patience) and report accuracy")
    parser.add_argument("--max-docs", type=int, default=None, help="read at most this many documents per label")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    options = dict(max_docs=args.max_docs, epochs=args.epochs, dim=args.dim, buckets=args.buckets, lr=args.lr,
                   batch_size=args.batch_size, valid_fraction=args.valid_fraction, seed=args.seed,
                   patience=args.patience)
    if args.teacher:
        if not args.unlabeled or args.positive or args.negative:
            parser.error("--teacher needs --unlabeled DOCS and no --positive/--negative")
        model, _ = runs.load(args.teacher, device=resolve_device("auto"))
        model.eval()
        tokenizer = Tokenizer.load(args.teacher_tokenizer or args.teacher)
        if tokenizer.n_words > model.config.vocab_size:
            raise PastureError(f"teacher tokenizer has {tokenizer.n_words} ids but the teacher model only "
                               f"{model.config.vocab_size}")
        metrics = train_quality_from_teacher(args.unlabeled, partial(text_losses, model, tokenizer), args.out,
                                             fraction=args.teacher_fraction, teacher=args.teacher, **options)
    elif args.positive and args.negative:
        metrics = train_quality_classifier(args.positive, args.negative, args.out, **options)
    else:
        parser.error("give --positive and --negative documents, or --teacher CKPT with --unlabeled documents")
    print(json.dumps(metrics))
    return 0

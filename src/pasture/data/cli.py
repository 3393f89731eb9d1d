"""`pasture curate RECIPE [section.key=value ...]` and `pasture curate train-quality ...`.

RECIPE is a TOML file or a shipped name (`web` -> recipes/curate/web.toml). The word
`train-quality` hands the remaining arguments to the quality-classifier trainer in
`pasture.data.filters.quality`.
"""

from __future__ import annotations

import argparse
import json

from pasture.errors import PastureError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "curate",
        help="curate web data: extract, de-duplicate (URL, MinHash, line), filter, mix",
        description="Run a curation recipe: `pasture curate web input.paths='[\"crawl/\"]' output.dir=out`. "
        "Every recipe key can be overridden as section.key=value (e.g. minhash.bands=20 engine.kind=ray). "
        "`pasture curate train-quality ...` trains the model-based quality classifier.",
    )
    parser.add_argument("recipe", metavar="RECIPE", help="recipe TOML file, a shipped recipe name (web), "
                        "or the word train-quality")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="KEY=VALUE",
                        help="recipe overrides, section.key=value")
    parser.set_defaults(func=curate_command)
    return parser


def curate_command(args: argparse.Namespace) -> int:
    if args.recipe == "train-quality":
        try:
            from pasture.data.filters.quality import train_quality_cli
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("pasture.data.filters"):
                raise
            raise PastureError("train-quality needs pasture.data.filters.quality, which is not installed") from None

        return int(train_quality_cli(list(args.overrides)) or 0)
    from pasture.data.curate import run_curation
    from pasture.data.recipe import load_recipe, parse_recipe

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

"""The curation recipe: one dataclass per pipeline section, built from TOML + overrides.

Per-document filter sections (`[heuristic]`, `[language]`, `[quality]`, `[safety]`,
`[domains]`, ...) belong to `pasture.data.filters` and are passed through as keyword
arguments to the stage classes its `STAGES` registry names; `[mix]` is passed to
`pasture.data.mix.write_mix` the same way.
"""

from __future__ import annotations

import importlib
import importlib.resources
from dataclasses import dataclass, field
from typing import Any

from pasture.config import apply_overrides, build_dataclass, load_toml_recipe
from pasture.errors import PastureError

OUTPUT_FORMATS = ("jsonl.zst", "jsonl", "parquet")
ENGINE_KINDS = ("local", "ray")


@dataclass
class InputConfig:
    paths: list[str]
    format: str = "auto"  # auto | warc | html | documents
    max_invalid_fraction: float = 0.001  # drop text with more U+FFFD (undecodable bytes) than this share of characters
    max_document_bytes: int = 100_000_000  # larger documents are counted as document_too_large and skipped


@dataclass
class OutputConfig:
    dir: str
    shard_size: int = 100_000  # documents per output file
    format: str = "jsonl.zst"
    write_rejects: bool = True
    overwrite: bool = False  # start afresh instead of resuming when the recipe changed


@dataclass
class ExtractConfig:
    enabled: bool = True
    engine: str = "resiliparse"  # resiliparse | trafilatura
    timeout_s: float = 5.0
    main_content: bool = True
    alt_texts: bool = True
    strip_markdown: bool = True


@dataclass
class UrlDedupConfig:
    enabled: bool = True
    hash_ranges: int = 1  # parallel tasks, each owning a slice of the URL-hash space


@dataclass
class MinhashConfig:
    enabled: bool = True
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1
    hash_ranges: int = 1  # tasks per band: each buckets one slice of the band-key space
    batch_docs: int = 512
    cluster_partitions: int = 16  # clustering tasks per round: each holds 1/N of the duplicate graph
    per_language: bool = False  # near-duplicates only within one language (fastText language ID at ingest)


@dataclass
class LineDedupConfig:
    enabled: bool = True
    bucket_docs: int = 30_000_000
    max_count: int = 6  # a line seen more often than this within a bucket is removed
    hash_ranges: int = 1
    per_language: bool = False  # lines counted per language, in buckets of its documents (fastText ID at ingest)


@dataclass
class EngineConfig:
    kind: str = "local"  # local | ray
    workers: int = 0  # 0: every core
    ray_address: str = ""  # empty: start a local Ray cluster
    fit_sample_docs: int = 10_000  # documents given to stages with fit() before the filtering pass
    progress: bool = True  # a progress bar per phase


@dataclass
class CurateConfig:
    input: InputConfig
    output: OutputConfig
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    url_dedup: UrlDedupConfig = field(default_factory=UrlDedupConfig)
    minhash: MinhashConfig = field(default_factory=MinhashConfig)
    line_dedup: LineDedupConfig = field(default_factory=LineDedupConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    filters: dict[str, dict[str, Any]] = field(default_factory=dict)  # enabled filter sections, recipe order
    mix: dict[str, Any] | None = None  # the [mix] section when enabled


OWN_SECTIONS = {"input": InputConfig, "output": OutputConfig, "extract": ExtractConfig, "url_dedup": UrlDedupConfig,
                "minhash": MinhashConfig, "line_dedup": LineDedupConfig, "engine": EngineConfig}


def filter_registry() -> dict[str, type] | None:
    """`pasture.data.filters.STAGES`, or None while that package does not exist."""
    try:
        module = importlib.import_module("pasture.data.filters")
    except ModuleNotFoundError as e:
        if e.name in ("pasture.data.filters",):
            return None
        raise
    return getattr(module, "STAGES", None)


def _enabled(section: dict[str, Any], name: str) -> bool:
    value = section.get("enabled", True)
    if not isinstance(value, bool):
        raise PastureError(f"{name}.enabled: expected bool, got {type(value).__name__} {value!r}")
    return value


def parse_recipe(recipe: dict[str, Any], registry: dict[str, type] | None = None) -> CurateConfig:
    """Check a recipe dict and build its config; every error names the offending key."""
    values: dict[str, Any] = {}
    filters: dict[str, dict[str, Any]] = {}
    mix = None
    for name, section in recipe.items():
        if not isinstance(section, dict):
            raise PastureError(f"{name}: expected a section [{name}], got a value {section!r}")
        if name in OWN_SECTIONS:
            values[name] = build_dataclass(OWN_SECTIONS[name], section, name)
        elif name == "mix":
            if _enabled(section, name):
                mix = {k: v for k, v in section.items() if k != "enabled"}
        else:
            if registry is None:
                registry = filter_registry()
            if not _enabled(section, name):
                continue
            if registry is None:
                raise PastureError(f"[{name}] is enabled but pasture.data.filters is not installed")
            if name not in registry:
                known = ", ".join([*OWN_SECTIONS, "mix", *registry])
                raise PastureError(f"unknown section [{name}] (known: {known})")
            filters[name] = {k: v for k, v in section.items() if k != "enabled"}
    for required in ("input", "output"):
        if required not in values:
            raise PastureError(f"missing section [{required}]")
    config = CurateConfig(**values, filters=filters, mix=mix)
    if config.output.format not in OUTPUT_FORMATS:
        raise PastureError(f"output.format: expected one of {', '.join(OUTPUT_FORMATS)}, got {config.output.format!r}")
    if config.engine.kind not in ENGINE_KINDS:
        raise PastureError(f"engine.kind: expected one of {', '.join(ENGINE_KINDS)}, got {config.engine.kind!r}")
    for key, value in [("output.shard_size", config.output.shard_size), ("minhash.ngram", config.minhash.ngram),
                       ("minhash.bands", config.minhash.bands), ("minhash.rows", config.minhash.rows),
                       ("line_dedup.bucket_docs", config.line_dedup.bucket_docs),
                       ("url_dedup.hash_ranges", config.url_dedup.hash_ranges),
                       ("minhash.hash_ranges", config.minhash.hash_ranges),
                       ("minhash.cluster_partitions", config.minhash.cluster_partitions),
                       ("line_dedup.hash_ranges", config.line_dedup.hash_ranges)]:
        if value < 1:
            raise PastureError(f"{key}: must be at least 1, got {value}")
    return config


def recipe_dir() -> str:
    return str(importlib.resources.files("pasture") / "recipes" / "curate")


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> dict[str, Any]:
    """A recipe file or shipped name (`web` -> recipes/curate/web.toml) with `section.key=value` overrides applied.

    `engine=ray` is accepted as short for `engine.kind=ray`.
    """
    recipe = load_toml_recipe(name_or_path, recipe_dir())
    overrides = [f"engine.kind={o.split('=', 1)[1]}" if o.split("=", 1)[0].strip() == "engine" else o
                 for o in overrides]
    return apply_overrides(recipe, list(overrides))

"""`run_curation`: the Llama 3 web-data pipeline as resumable, sharded phases.

The driver: it prepares the output folder, runs each phase's tasks on the engine (local
processes or Ray), adds up their statistics and writes the report. The phases live in
`pasture.data.phases`, one module each:

1. ingest (per input file): read, extract HTML, normalise URLs, identify the language when
   de-duplication is per language; write the documents, their URL keys and MinHash band keys.
2. url_dedup (per URL-hash range): keep the most recent crawl of each URL.
3. minhash_buckets (per band x hash range): documents sharing a band key -> pairs.
4. minhash_cluster (rounds of per-partition tasks, then per shard): connected components
   by min-label propagation over hash-partitioned edges; smallest doc key of a cluster is kept.
5. line_count (per shard) and line_merge (per bucket x hash range): lines seen more
   than `max_count` times within a bucket of `bucket_docs` documents (of one language
   when line de-duplication is per language).
6. filter (per shard): apply the removals and line dedup, then the per-document
   stages of `pasture.data.filters`; write the output and the rejects.
7. mix: `pasture.data.mix.write_mix` over the output, when `[mix]` is enabled.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from pasture.data.engine import Phase, make_engine, run_tasks, write_json_atomic
from pasture.data.mix import write_mix
from pasture.data.phases.filtering import Filter, build_stages, fit_stages
from pasture.data.phases.ingest import Ingest
from pasture.data.phases.line_dedup import LineCount, LineMerge, first_ordinals
from pasture.data.phases.near_dedup import MinhashBuckets, cluster_duplicates
from pasture.data.phases.shards import WORK, tags_languages, work_dir
from pasture.data.phases.url_dedup import UrlDedup
from pasture.data.recipe import CurateConfig, parse_recipe
from pasture.data.sources import input_files
from pasture.data.stats import merge_stats, write_report
from pasture.errors import PastureError

MANAGED = ("data", "rejects", "mix", WORK, "stats.json", "stats.md", "recipe.json")


def _prepare_output(config: CurateConfig, resolved: dict[str, Any]) -> None:
    out = Path(config.output.dir)
    fingerprint = {k: v for k, v in resolved.items() if k != "engine"}
    recorded = out / "recipe.json"
    if recorded.exists():
        previous = json.loads(recorded.read_text())
        if previous != fingerprint:
            if not config.output.overwrite:
                raise PastureError(f"{out} holds a run of a different recipe; use a new output.dir, "
                                   "or output.overwrite=true to start afresh")
            for name in MANAGED:
                path = out / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
    elif out.exists() and any((out / name).exists() for name in ("data", WORK)):
        raise PastureError(f"{out} holds output that is not from pasture curate; choose an empty output.dir")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(recorded, fingerprint)


def _resolved(config: CurateConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _language_counts(ingested: list[dict[str, int]], kept: list[dict[str, int]]) -> dict[str, dict[str, int]]:
    """Documents per language as identified at ingest, and how many of them were kept; most frequent first."""
    totals: dict[str, dict[str, int]] = {}
    for column, parts in (("docs", ingested), ("kept", kept)):
        for part in parts:
            for language, count in part.items():
                totals.setdefault(language, {"docs": 0, "kept": 0})[column] += count
    return dict(sorted(totals.items(), key=lambda kv: (-kv[1]["docs"], kv[0])))


def run_curation(recipe: dict[str, Any] | CurateConfig, registry: dict[str, type] | None = None) -> dict[str, Any]:
    """Run the whole pipeline of a recipe (a dict as loaded from TOML, or a built config); returns the stats.

    `registry` maps filter section names to stage classes; by default `pasture.data.filters.STAGES`.
    """
    config = recipe if isinstance(recipe, CurateConfig) else parse_recipe(recipe, registry)
    resolved = _resolved(config)
    _prepare_output(config, resolved)
    out, work = Path(config.output.dir), work_dir(config)
    files = input_files(config.input.paths, config.input.format)
    stages = build_stages(config.filters, registry)
    n = len(files)
    phases: dict[str, float] = {}
    engine = make_engine(config.engine.kind, config.engine.workers, config.engine.ray_address,
                         config.engine.progress)
    wall = time.perf_counter()

    def phase(name: str, runner: Phase, tasks: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        results = run_tasks(engine, runner, tasks, work / "done" / name, name)
        phases[name] = time.perf_counter() - t0
        return results

    try:
        ingest = Ingest(config)
        ingested = phase("ingest", ingest, ingest.tasks(files))
        global_counts: dict[str, dict[str, float]] = {}
        if config.url_dedup.enabled:
            url_dedup = UrlDedup(config)
            phase("url_dedup", url_dedup, url_dedup.tasks(n))
            global_counts["url_dedup"] = {"seconds": phases["url_dedup"]}
        if config.minhash.enabled:
            buckets = MinhashBuckets(config)
            pairs = sum(r.pairs for r in phase("minhash_buckets", buckets, buckets.tasks(n)).values())
            t0 = time.perf_counter()
            cluster = cluster_duplicates(engine, config, n)
            phases["minhash_cluster"] = time.perf_counter() - t0
            global_counts["minhash"] = {"seconds": phases["minhash_buckets"] + phases["minhash_cluster"],
                                        "candidate_pairs": pairs, "clusters": cluster.clusters,
                                        "cluster_rounds": cluster.rounds}
        ordinals = first_ordinals(config, [r.docs for r in ingested.values()])
        if config.line_dedup.enabled:
            line_count, line_merge = LineCount(config), LineMerge(config)
            counted = phase("line_count", line_count, line_count.tasks(ordinals))
            merge_tasks = line_merge.tasks(list(counted.values()))
            merged = phase("line_merge", line_merge, merge_tasks)
            global_counts["line_dedup"] = {
                "seconds": phases["line_count"] + phases["line_merge"],
                "frequent_lines": sum(m.frequent_lines for m in merged.values()),
                "buckets": len({t.bucket for t in merge_tasks.values()})}
        t0 = time.perf_counter()
        fit_stages(config, stages, n)
        phases["fit"] = time.perf_counter() - t0
        filtering = Filter(config, stages)
        filtered = phase("filter", filtering, filtering.tasks(ordinals))
    finally:
        engine.close()
    stage_stats = merge_stats([r.stats for r in ingested.values()] + [r.stats for r in filtered.values()])
    for name, counts in global_counts.items():
        for key, value in counts.items():
            stage_stats.setdefault(name, {"docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0,
                                          "removed": {}, "seconds": 0.0})
            stage_stats[name][key] = stage_stats[name].get(key, 0) + value
    output_files = [f for k in sorted(filtered) for f in filtered[k].files]
    extra: dict[str, Any] = {"input_files": n, "output_files": len(output_files), "engine": config.engine.kind,
                             "workers": getattr(engine, "workers", config.engine.workers)}
    if tags_languages(config):
        extra["languages"] = _language_counts([r.languages for r in ingested.values()],
                                              [r.languages for r in filtered.values()])
    if config.mix is not None:
        t0 = time.perf_counter()
        extra["mix"] = write_mix(output_files, out / "mix", **config.mix)
        phases["mix"] = time.perf_counter() - t0
    phases["total"] = time.perf_counter() - wall
    extra["recipe"] = resolved
    return write_report(out, stage_stats, phases, json.loads(json.dumps(extra, default=str)))

"""Phase 6, filter (one task per shard): apply the de-duplication decisions and the line removal,
then the per-document stages of `pasture.data.filters` in recipe order; write the output and the rejects."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pasture.documents import Document, DocumentWriter
from pasture.data.phases.line_dedup import LineRemover, Ordinals
from pasture.data.phases.shards import Rejects, describe_key, shard_name, tags_languages, text_bytes
from pasture.data.phases.survivors import DEDUP_REASONS, ingested_docs, surviving_docs
from pasture.data.recipe import CurateConfig, filter_registry
from pasture.data.stats import StageStats
from pasture.errors import PastureError


@dataclass
class FilterTask:
    shard: int
    first_ordinals: Ordinals  # where the shard's documents start in the line buckets


@dataclass
class FilterResult:
    stats: dict[str, dict[str, Any]]  # StageStats of the dedup stages, line_dedup, each filter stage, output
    files: list[str]  # output files written, in order
    languages: dict[str, int] = field(default_factory=dict)  # kept documents per ingest language


def build_stages(filters: dict[str, dict[str, Any]], registry: dict[str, type] | None = None) -> list[Any]:
    """Instantiate the enabled per-document stages from their recipe sections, in recipe order."""
    if not filters:
        return []
    registry = registry if registry is not None else filter_registry() or {}
    stages = []
    for name, kwargs in filters.items():
        try:
            stages.append(registry[name](**kwargs))
        except TypeError as e:
            raise PastureError(f"[{name}]: {e}") from None
    return stages


def fit_stages(config: CurateConfig, stages: list[Any], shards: int) -> None:
    """Give stages that need corpus statistics (`fit`) a sample of de-duplicated documents."""
    fitting = [s for s in stages if hasattr(s, "fit")]
    if not fitting:
        return
    sample: list[Document] = []
    for shard in range(shards):
        for doc in surviving_docs(config, shard):
            sample.append(doc)
            if len(sample) >= config.engine.fit_sample_docs:
                break
        if len(sample) >= config.engine.fit_sample_docs:
            break
    for stage in fitting:
        stage.fit(sample)


class Filter:
    """Ingested shard -> output files and rejects, with every stage's counts. `stages` are already fitted."""

    result_type = FilterResult

    def __init__(self, config: CurateConfig, stages: list[Any]) -> None:
        self.config, self.stages = config, stages

    def tasks(self, ordinals: list[Ordinals]) -> dict[str, FilterTask]:
        return {shard_name(i): FilterTask(i, first) for i, first in enumerate(ordinals)}

    def run(self, task: FilterTask) -> FilterResult:
        config, shard = self.config, task.shard
        out = Path(config.output.dir)
        stats = StageStats()
        rejects = Rejects(config, shard)
        lines = LineRemover(config, task.first_ordinals) if config.line_dedup.enabled else None
        writers: list[DocumentWriter] = []
        stage_seconds: dict[str, float] = {}
        dedup_stages = [name for name in DEDUP_REASONS if getattr(config, name).enabled]
        kept_languages: dict[str, int] = {}
        try:
            for item in ingested_docs(config, shard):
                doc = item.doc
                size = text_bytes(doc.text)
                language = doc.meta.get("language")  # as identified at ingest; the [language] stage may retag
                for stage in dedup_stages:
                    if stage == item.removed_by:
                        stats.dropped(stage, DEDUP_REASONS[stage], size)
                        rejects.write(stage, doc, DEDUP_REASONS[stage], duplicate_of=describe_key(item.duplicate_of))
                        break
                    stats.passed(stage, size)
                if item.removed_by:
                    continue
                if lines is not None:
                    t0 = time.perf_counter()
                    removed = lines.apply(doc)
                    if removed.removed:
                        stats.add("line_dedup", "lines_removed", removed.removed)
                    if removed.text is None:
                        stats.dropped("line_dedup", "all_lines_duplicate", size)
                        rejects.write("line_dedup", doc, "all_lines_duplicate")
                        continue
                    doc.text = removed.text
                    stats.passed("line_dedup", size, text_bytes(doc.text))
                    size = text_bytes(doc.text)
                    stage_seconds["line_dedup"] = stage_seconds.get("line_dedup", 0.0) + time.perf_counter() - t0
                if not self._passes_stages(doc, size, stats, rejects, stage_seconds):
                    continue
                if not writers or writers[-1].count >= config.output.shard_size:
                    path = out / "data" / f"{shard_name(shard)}-{len(writers):05d}.{config.output.format}"
                    writers.append(DocumentWriter(path))
                writers[-1].write(doc)
                stats.passed("output", text_bytes(doc.text))
                if tags_languages(config):
                    kept_languages[language] = kept_languages.get(language, 0) + 1
            for w in writers:
                w.close()
            rejects.close()
        except BaseException:
            for w in writers:
                w.abort()
            rejects.abort()
            raise
        for name, seconds in stage_seconds.items():
            stats.add(name, "seconds", seconds)
        return FilterResult(stats.to_dict(), [str(w.path) for w in writers], kept_languages)

    def _passes_stages(self, doc: Document, size: int, stats: StageStats, rejects: Rejects,
                       seconds: dict[str, float]) -> bool:
        """Run the per-document stages in order until one drops the document (counted and written to rejects)."""
        for stage in self.stages:
            t0 = time.perf_counter()
            reason = stage.process(doc)
            seconds[stage.name] = seconds.get(stage.name, 0.0) + time.perf_counter() - t0
            if reason is not None:
                stats.dropped(stage.name, reason, size)
                rejects.write(stage.name, doc, reason)
                return False
            new_size = text_bytes(doc.text)
            stats.passed(stage.name, size, new_size)
            size = new_size
        return True

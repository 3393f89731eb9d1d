"""The curation phases, one module each, driven by `pasture.data.curate.run_curation`.

Each phase is a class built from the recipe (`CurateConfig`) whose `run(task)` takes one
typed task (a dataclass) and returns one typed result (a dataclass of JSON-able fields).
The engine runs the same tasks in local processes or on Ray and keeps each result in a
done-marker, so a resumed run skips finished tasks.

- `ingest`: `Ingest` (per input file)
- `url_dedup`: `UrlDedup` (per URL-hash range)
- `near_dedup`: `MinhashBuckets`, `MinhashLabelRound`, `MinhashRemovals` (MinHash LSH)
- `line_dedup`: `LineCount`, `LineMerge`
- `filtering`: `Filter` (dedup decisions, line removal, per-document stages, output)

`shards` holds what they share: doc keys, the work-folder layout and reject writers.
"""

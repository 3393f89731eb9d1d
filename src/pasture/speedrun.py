"""`pasture speedrun`: the whole system on whatever machine it runs on.

gather documents -> curate -> train a tokenizer -> tokenize -> pre-train -> evaluate
-> sample -> post-train (reward model, SFT, rejection sampling, DPO) -> report, all under
one run folder. Each stage records its result in
`stages/<stage>.json` when it finishes; running the same command again skips the
finished stages and resumes pre-training from its last checkpoint, so an interrupted
speedrun loses nothing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pasture import runs
from pasture.baselines import compressor_baselines
from pasture.data import recipe as curation
from pasture.data.curate import run_curation
from pasture.data.gather import default_roots, gather
from pasture.data.sources import input_files
from pasture.errors import PastureError
from pasture.model.info import num_matmul_params
from pasture.post.speedrun_stage import PostStageConfig, post_train
from pasture.report.card import environment, write_report
from pasture.runtime import resolve_device
from pasture.scaling.laws import approach3, approach3_optimum, predicted_loss, read_points
from pasture.scaling.plots import plot_isoflops
from pasture.scaling.sweep import read_points_file
from pasture.serve import Engine, SamplingParams
from pasture.tokenizer import Tokenizer, train_tokenizer
from pasture.train.loader import ValidationLoader
from pasture.train.metrics import read_metrics
from pasture.train.pretrain import pretrain
from pasture.train.recipe import load_recipe, parse_recipe
from pasture.train.shards import TokenDataset
from pasture.train.tokenize import tokenize_documents
from pasture.train.validation import evaluate

RUN_LAYOUT = {
    "sources/": "gathered documents (documents-NNNNN.jsonl.zst shards)",
    "curated/": "curation output: kept documents, rejects with reasons, stats.json / stats.md",
    "tokenizer/": "the trained tokenizer.model (tiktoken format) and its stats",
    "tokens/": "token shards (train and val splits) and index.json",
    "train/": "pre-training: checkpoints/, metrics.jsonl, recipe.json, tokenizer.model, averaged/",
    "post/": "post-training: data/, reward/, sft/, samples.jsonl, dpo/ (the chat model), post.json",
    "stages/": "one JSON result per finished stage (what lets a rerun skip it)",
    "plots/": "loss, learning-rate and throughput plots",
    "speedrun.json": "everything above in one summary",
    "report.md, report.html": "the report card (the HTML is self-contained)",
}

# the IsoFLOP sweep on the default sources that chose the tiny preset (benchmarks/RESULTS.md)
SCALING_SWEEP = Path(__file__).resolve().parent / "recipes" / "scaling" / "tiny-isoflops.jsonl"

PRESET_RECIPES = {"tiny": "tiny", "125m": "125m", "llama3.2-1b": "1b", "1b": "1b", "llama3.1-8b": "8b", "8b": "8b"}
# What the speedrun changes in the tiny recipe, each lever measured as an A/B at the same wall-clock
# (benchmarks/RESULTS.md, session 7): Muon for the blocks' matrices and warmup-stable-decay beat AdamW
# and cosine. Pre-training gets 9.5 minutes whatever the machine: at step 300 the loop fixes how many of
# at most 3,000 steps fit (1,797 on this project's 2-core box in session 8; the last 10% anneal), which
# warmup-stable-decay allows, its rate being flat until the decay.
# The tiny recipe itself stays AdamW/cosine: torch's Muon does not take sharded (FSDP/TP) matrices.
SPEEDRUN_LEVERS = {"tiny": ['optim.optimizer="muon"', 'optim.schedule="wsd"', "train.steps=3000",
                            "train.anneal_steps=300", "train.time_budget_s=570"]}


@dataclass
class SpeedrunConfig:
    name: str = "speedrun"
    runs_dir: str = "runs"
    preset: str = "tiny"
    sources: list[str] = field(default_factory=list)  # files/globs; empty: text already on this machine
    max_bytes: int = 24_000_000
    vocab_size: int = 4096
    val_fraction: float = 0.1  # ~10x the held-out documents of 0.02: a bits/byte no single document dominates
    seed: int = 0
    curate: bool = True
    recipe_overrides: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=lambda: ["def ", "The ", "import "])
    post: bool = True  # post-train the pre-trained model into a chat model
    post_overrides: list[str] = field(default_factory=list)  # post.FIELD=VALUE for PostStageConfig
    progress: bool = True

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


class Stages:
    """Runs named stages once: a finished stage's JSON result is reused on the next run.

    The settings that shape the results are recorded in `stages/settings.json`; a rerun
    with other settings is refused rather than mixing two runs in one folder.
    """

    def __init__(self, run_dir: Path, settings: dict[str, Any], log: Callable[[str], None]) -> None:
        self.dir = run_dir / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        recorded = self.dir / "settings.json"
        if recorded.exists():
            before = json.loads(recorded.read_text())
            changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            if changed:
                raise PastureError(f"{run_dir} was started with other settings ({', '.join(changed)} differ); "
                                   "pass --name for a new run, or the same settings to resume this one")
        else:
            recorded.write_text(json.dumps(settings, indent=2) + "\n")

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.dir / f"{name}.json"
        if path.exists():
            self.log(f"[{name}] already done, reusing {path}")
            return json.loads(path.read_text())
        self.log(f"[{name}] ...")
        started = time.perf_counter()
        result = fn()
        result["seconds"] = round(time.perf_counter() - started, 2)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
        os.replace(tmp, path)
        self.log(f"[{name}] done in {result['seconds']:.1f} s")
        return result


# ---------------------------------------------------------------- stages


def gather_stage(cfg: SpeedrunConfig) -> dict[str, Any]:
    out = cfg.run_dir / "sources"
    if cfg.sources:
        files = input_files(cfg.sources)  # missing or unreadable sources fail here, before any later stage
        return {"inputs": list(cfg.sources), "files": [{"path": str(f), "bytes": f.stat().st_size} for f in files],
                "bytes": sum(f.stat().st_size for f in files)}
    roots = default_roots()
    if not roots:
        raise PastureError("found no text on this machine to train on; pass --source FILES")
    result = gather(roots, out, cfg.max_bytes, seed=cfg.seed, progress=cfg.progress)
    if result["documents"] == 0:
        raise PastureError("the default roots held no readable text; pass --source FILES")
    return {**result, "inputs": [str(out)]}


def curation_recipe(cfg: SpeedrunConfig, inputs: list[str]) -> dict[str, Any]:
    """The shipped web recipe, set for a corpus of source code and documentation."""
    recipe = curation.load_recipe("web")
    recipe["input"]["paths"] = inputs
    recipe["output"]["dir"] = str(cfg.run_dir / "curated")
    recipe["output"]["format"] = "jsonl.zst"
    # Prose rules (stop words, alphabetic words, bullets, '#' ratio) would drop every
    # Python file; code is wanted here. Repetition, dirty words, KL outliers and
    # length stay on, as do language tags, PII masking and domain tags.
    # Source code repeats n-grams by nature, so the Gopher n-gram rules are off too;
    # the duplicate line/paragraph rules still catch logs and generated tables.
    recipe["heuristic"] = {"enabled": True, "min_words": 20, "min_alpha_words": None, "min_stop_words": None,
                           "max_hash_ratio": None, "max_bullet_lines": None, "max_ellipsis_lines": None,
                           "top_ngram_max": {}, "dup_ngram_max": {}}
    recipe["language"] = {"enabled": True, "min_score": 0.0}
    recipe["mix"] = {"enabled": False}
    recipe["engine"]["fit_sample_docs"] = 2000
    recipe["engine"]["progress"] = cfg.progress
    return recipe


def curate_stage(cfg: SpeedrunConfig, gathered: dict[str, Any]) -> dict[str, Any]:
    if not cfg.curate:
        return {"skipped": True, "outputs": gathered["inputs"], "note": "curation switched off (--no-curate)"}
    stats = run_curation(curation_recipe(cfg, gathered["inputs"]))
    return {**stats, "outputs": [str(cfg.run_dir / "curated" / "data")],
            "note": "Llama 3 pipeline: URL de-duplication, MinHash, line de-duplication, heuristic filters "
                    "(code-friendly settings), language id, safety/PII, domain tags."}


def tokenizer_stage(cfg: SpeedrunConfig, docs: list[str]) -> dict[str, Any]:
    stats = train_tokenizer(docs, cfg.vocab_size, cfg.run_dir / "tokenizer", show_progress=cfg.progress)
    return {**stats, "path": str(cfg.run_dir / "tokenizer" / "tokenizer.model")}


def tokenize_stage(cfg: SpeedrunConfig, docs: list[str], tokenizer_path: str) -> dict[str, Any]:
    # overwrite: a dataset left by an interrupted attempt of this stage is never a finished one
    return tokenize_documents(docs, tokenizer_path, cfg.run_dir / "tokens", val_fraction=cfg.val_fraction,
                              progress=cfg.progress, overwrite=True)


def pretrain_stage(cfg: SpeedrunConfig) -> dict[str, Any]:
    recipe_name = PRESET_RECIPES.get(cfg.preset)
    if recipe_name is None:
        raise PastureError(f"--preset {cfg.preset!r}: choose one of {', '.join(PRESET_RECIPES)}")
    overrides = [
        f'data.train=["{cfg.run_dir / "tokens"}"]',
        f'log.dir="{cfg.run_dir / "train"}"',
        "resume=\"auto\"",
        f"log.progress={'true' if cfg.progress else 'false'}",
        f'eval.prompts={json.dumps(cfg.prompts)}',
        # TensorBoard logs when it is installed; the main job does not warn about an optional extra
        f"log.tensorboard={'true' if importlib.util.find_spec('tensorboard') else 'false'}",
        *SPEEDRUN_LEVERS.get(cfg.preset, []),
        *cfg.recipe_overrides,  # the user's overrides win
    ]
    raw = load_recipe(recipe_name, overrides)
    recipe = parse_recipe(raw)
    started = time.perf_counter()
    summary = pretrain(recipe, raw)
    if not summary["finished"]:  # stopped by a signal: not recorded as done
        raise PastureError(f"pre-training stopped at step {summary['steps']} of "
                           f"{summary.get('planned_steps', recipe.train.steps)}; run the same command again to resume it")
    summary["wall_seconds"] = time.perf_counter() - started
    summary["recipe"] = recipe_name
    summary["overrides"] = cfg.recipe_overrides
    return summary


def post_stage_config(cfg: SpeedrunConfig) -> PostStageConfig:
    """PostStageConfig with the `post.FIELD=VALUE` overrides applied (values are JSON, or plain strings)."""
    post = PostStageConfig(seed=cfg.seed, progress=cfg.progress)
    fields = {f.name: f.type for f in dataclasses.fields(PostStageConfig)}
    for override in cfg.post_overrides:
        key, _, value = override.removeprefix("post.").partition("=")
        if key not in fields or not value:
            raise PastureError(f"{override!r}: post-training overrides are post.FIELD=VALUE with FIELD one of "
                               f"{', '.join(fields)}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        current = getattr(post, key)
        if type(parsed) is not type(current) and not (isinstance(current, float) and isinstance(parsed, int)):
            raise PastureError(f"{override!r}: post.{key} takes a {type(current).__name__}")
        setattr(post, key, type(current)(parsed))
    return post


def post_stage(cfg: SpeedrunConfig) -> dict[str, Any]:
    post = post_stage_config(cfg)
    post.device = resolve_device("auto").type
    return post_train(cfg.run_dir, str(cfg.run_dir / "train"), post, log=print)


def unigram_bits_per_byte(tokens_dir: Path) -> dict[str, float]:
    """The baseline the model must beat: a unigram model of the training tokens (add-one
    smoothed), scored on exactly the validation targets the model is scored on."""
    train = TokenDataset(tokens_dir, "train")
    val = TokenDataset(tokens_dir, "val")
    counts = np.zeros(train.vocab_size, dtype=np.float64)
    for i in range(train.num_documents):
        counts += np.bincount(train.document(i), minlength=train.vocab_size)
    log_probs = np.log2(counts + 1) - np.log2(counts.sum() + train.vocab_size)
    bits, targets = 0.0, 0
    for i in range(val.num_documents):
        doc = val.document(i)[1:]  # a document's first token is never a target
        bits -= float(log_probs[doc].sum())
        targets += len(doc)
    return {"unigram_bits_per_token": bits / max(targets, 1), "unigram_bpb": bits / max(val.bytes, 1)}


def evaluate_stage(cfg: SpeedrunConfig) -> dict[str, Any]:
    device = resolve_device("auto")
    model, config = runs.load(cfg.run_dir / "train", device=device)
    val = TokenDataset(cfg.run_dir / "tokens", "val")
    seq_len = parse_recipe(json.loads((cfg.run_dir / "train" / "recipe.json").read_text())).train.seq_len
    # a sliding window: each target sees at least half a window of its document, as a compressor would
    loader = ValidationLoader(val, batch_size=8, seq_len=seq_len, stride=seq_len // 2)
    metrics = evaluate(model, loader, device, torch.bfloat16 if device.type == "cuda" else None)
    metrics["val_stride"] = loader.stride
    metrics.update(unigram_bits_per_byte(cfg.run_dir / "tokens"))
    metrics["bpb_vs_unigram"] = metrics["val_bpb"] / metrics["unigram_bpb"]
    metrics["beats_unigram"] = metrics["val_bpb"] < metrics["unigram_bpb"]
    metrics["weights"] = runs.describe(cfg.run_dir / "train")
    compressors = compressor_baselines(cfg.run_dir / "tokens", cfg.run_dir / "tokenizer" / "tokenizer.model")
    metrics["baselines"] = {"unigram_bpb": metrics["unigram_bpb"],
                            **{k: compressors[k] for k in ("xz_bpb", "zstd_bpb", "zstd_dict_bpb")}}
    metrics["matmul_params"] = num_matmul_params(config)  # the scaling sweep's parameter convention
    metrics["val_documents"] = compressors["val_documents"]
    metrics["largest_document_share"] = compressors["largest_document_share"]
    return metrics


def sample_stage(cfg: SpeedrunConfig) -> dict[str, Any]:
    device = resolve_device("auto")
    model, _ = runs.load(cfg.run_dir / "train", device=device)
    tokenizer = Tokenizer.load(cfg.run_dir / "tokenizer" / "tokenizer.model")
    params = SamplingParams(max_tokens=48, temperature=0.6, top_p=0.9, seed=cfg.seed)  # Meta's defaults
    with Engine(model, tokenizer, max_batch_size=max(1, len(cfg.prompts))) as engine:
        results = engine.generate(list(cfg.prompts), params)
    samples = [{"prompt": prompt, "completion": r.text, "temperature": params.temperature, "top_p": params.top_p,
                "tokens": r.completion_tokens} for prompt, r in zip(cfg.prompts, results)]
    return {"samples": samples, "weights": runs.describe(cfg.run_dir / "train")}


# ---------------------------------------------------------------- the job


def _curation_summary(curated: dict[str, Any]) -> dict[str, Any]:
    """Per-stage rows (docs and bytes in/out, removal reasons) for the report card."""
    if curated.get("skipped"):
        return {"note": curated["note"], "stages": []}
    rows = [{"stage": name, **{k: v for k, v in stage.items() if k != "removed"}, "reasons": stage.get("removed", {})}
            for name, stage in curated.get("stages", {}).items() if stage.get("docs_in")]
    return {"note": curated.get("note", ""), "stages": rows}


def speedrun(cfg: SpeedrunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage (skipping finished ones) and write the report card; returns the summary."""
    post_stage_config(cfg)  # a bad post.FIELD=VALUE fails now, not after pre-training
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(cfg).items() if k not in ("progress", "name", "runs_dir")}
    stages = Stages(run_dir, settings, log)

    gathered = stages.run("gather", lambda: gather_stage(cfg))
    curated = stages.run("curate", lambda: curate_stage(cfg, gathered))
    docs = curated["outputs"]
    tok = stages.run("tokenizer", lambda: tokenizer_stage(cfg, docs))
    tokens = stages.run("tokenize", lambda: tokenize_stage(cfg, docs, tok["path"]))
    trained = stages.run("pretrain", lambda: pretrain_stage(cfg))
    evaluation = stages.run("evaluate", lambda: evaluate_stage(cfg))
    samples = stages.run("sample", lambda: sample_stage(cfg))
    posted = stages.run("post", lambda: post_stage(cfg)) if cfg.post else None
    scaling = scaling_position(trained["tokens_seen"], evaluation, run_dir / "plots")

    train_records = _train_records(run_dir / "train")
    summary = {
        "name": cfg.name,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # the stages' own times, so a resumed speedrun still reports its whole cost
        "total_seconds": sum(s.get("seconds", 0) for s in (gathered, curated, tok, tokens, trained, evaluation, samples,
                                                            posted or {})),
        "config": {k: v for k, v in vars(cfg).items()},
        "environment": environment(),
        "gather": gathered,
        "curation": _curation_summary(curated),
        "tokenizer": _tokenizer_summary(tok),
        "tokenize": tokens,
        "pretrain": {
            "recipe": trained.get("recipe"), "parameters": trained.get("params"), "steps": trained.get("steps"),
            "time_budget_s": trained.get("time_budget_s"),
            "tokens": trained.get("tokens_seen"), "wall_seconds": round(trained.get("wall_seconds", 0), 1),
            "train_seconds": trained.get("train_seconds"),  # the steps' loop, over every resume
            "tokens_per_s (mean)": train_records.get("tokens_per_s"), "MFU": train_records.get("mfu"),
            "final train loss": trained.get("final_loss"), "skipped steps": trained.get("skipped_steps"),
        },
        "evaluation": evaluation,
        "val_bpb": evaluation["val_bpb"],
        "baselines": evaluation.get("baselines"),
        "samples": samples["samples"],
        "scaling": scaling,
        "post": posted,
        "layout": RUN_LAYOUT,
    }
    (run_dir / "speedrun.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    md, html = write_report(run_dir, summary)
    log(f"report: {md} and {html}")
    return summary


def scaling_position(tokens: int, evaluation: dict[str, Any], plot_dir: Path) -> dict[str, Any] | None:
    """Where this run sits against the IsoFLOP sweep that chose the tiny preset (shipped
    beside its recipe): its budget, the approach-3 optimum at that budget, and a plot.
    None for an evaluation recorded before parameters were counted the sweep's way."""
    params = evaluation.get("matmul_params")
    if params is None:
        return None
    flops = 6 * params * tokens
    points = read_points(read_points_file(SCALING_SWEEP))
    law = approach3(points)
    optimum = approach3_optimum(law, flops)
    plot_dir.mkdir(parents=True, exist_ok=True)
    plot_isoflops(points, plot_dir / "scaling.png",
                  {"tokens": tokens, "loss": evaluation["val_loss"], "label": f"this run ({flops:.2e} FLOPs)"})
    return {"sweep": str(SCALING_SWEEP), "flops": flops, "matmul params": params, "tokens": tokens,
            "tokens per param": tokens / params, "held-out loss": evaluation["val_loss"],
            "approach 3 optimal params": round(optimum["params"]), "approach 3 optimal tokens": round(optimum["tokens"]),
            "approach 3 loss at this run": predicted_loss(law, params, tokens),
            "approach 3 loss at the optimum": optimum["loss"]}


def _tokenizer_summary(tok: dict[str, Any]) -> dict[str, Any]:
    """What the report shows of tokenizer training: size, data, held-out compression."""
    heldout = tok.get("heldout") or {}
    check = tok.get("hf_segmentation_check") or {}
    return {
        "path": tok["path"], "vocab_size": tok["vocab_size"], "base ranks": tok["num_base_tokens"],
        "training documents": tok["train"]["docs"], "training bytes": tok["train"]["bytes"],
        "held-out documents": heldout.get("docs"), "held-out chars/token": heldout.get("chars_per_token"),
        "held-out bytes/token": heldout.get("bytes_per_token"),
        "segmentation equal to HF tokenizers": f"{check.get('identical')}/{check.get('texts')} texts" if check else None,
        "seconds": tok.get("seconds"),
    }


def _train_records(train_dir: Path) -> dict[str, Any]:
    records = read_metrics(train_dir, "train")
    if not records:
        return {}
    tps = [r["tokens_per_s"] for r in records[1:] or records]
    mfus = [r["mfu"] for r in records if r.get("mfu") is not None]
    return {"tokens_per_s": round(float(np.mean(tps)), 1),
            "mfu": round(float(np.mean(mfus)), 4) if mfus else "n/a (CPU)"}


def format_headline(summary: dict[str, Any]) -> str:
    e = summary["evaluation"]
    verdict = "below" if e["beats_unigram"] else "NOT below"
    line = (f"held-out bits/byte {e['val_bpb']:.4f} vs unigram {e['unigram_bpb']:.4f} "
            f"({verdict} the unigram baseline, ratio {e['bpb_vs_unigram']:.3f})")
    xz = (e.get("baselines") or {}).get("xz_bpb")
    if xz is not None:
        line += f", xz -9e {xz:.4f} ({'beaten' if e['val_bpb'] < xz else 'not beaten'})"
    post = summary.get("post")
    if post:
        losses = post["answer_loss"]
        line += (f"; held-out answer loss base {losses['base']:.3f} -> SFT {losses['sft']:.3f} -> DPO "
                 f"{losses['dpo']:.3f}, chat model {post['chat_model']}")
    return f"{line}; {math.ceil(summary['total_seconds'])} s total"

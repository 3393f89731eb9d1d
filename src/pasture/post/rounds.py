"""`pasture rounds`: Llama 3's post-training loop (§4.1, Figure 7), N times.

Each round r, in OUT/round_r/:

1. `reward/`   a reward model from MODEL on the human preferences plus every pair
               rejection sampling has produced so far;
2. `samples.jsonl` (+ `.pairs.jsonl`)  rejection sampling of the prompts with the
               current policy (MODEL in round 1, then the previous round's DPO model);
3. `sft/`      SFT from MODEL on the kept samples plus any given SFT data;
4. `dpo/`      DPO from the SFT model on the preferences plus this round's pairs.

A stage listed in `rounds.average` is trained `rounds.average_seeds` times with different
seeds (`<stage>_seed<s>/`) and the runs are averaged into `<stage>/` (a model soup).
A stage whose folder holds `summary.json` (or whose samples file exists) is finished
and skipped, so a rerun continues where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pasture.config import apply_overrides, build_dataclass, load_toml_recipe
from pasture.errors import PastureError
from pasture.post.average import average_models
from pasture.post.dpo import dpo
from pasture.post.recipe import RECIPE_DIR, load_recipe
from pasture.post.rejection import RejectionConfig, default_pairs_path, rejection_sample
from pasture.post.reward import reward
from pasture.post.sft import sft

STAGES = ("reward", "sft", "dpo")


@dataclass
class RoundsSection:
    n: int = 1
    average: list[str] = field(default_factory=list)  # stages trained with several seeds and averaged
    average_seeds: int = 2


@dataclass
class RoundsRecipe:
    rounds: RoundsSection = field(default_factory=RoundsSection)
    rejection: RejectionConfig = field(default_factory=RejectionConfig)
    # per stage: keys over the shipped recipe of that stage (recipes/post/<stage>.toml)
    reward: dict[str, Any] = field(default_factory=dict)
    sft: dict[str, Any] = field(default_factory=dict)
    dpo: dict[str, Any] = field(default_factory=dict)
    name: str = ""


def load_rounds_recipe(name_or_path: str, overrides: list[str] = ()) -> RoundsRecipe:
    raw = apply_overrides(load_toml_recipe(name_or_path, RECIPE_DIR), list(overrides))
    recipe = build_dataclass(RoundsRecipe, raw, "")
    unknown = [s for s in recipe.rounds.average if s not in STAGES]
    if unknown:
        raise PastureError(f"rounds.average: unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
    return recipe


def _flatten(table: dict[str, Any], prefix: str = "") -> list[str]:
    """Nested TOML keys as `a.b=value` overrides (values as TOML literals)."""
    out = []
    for key, value in table.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def _train_stage(stage: str, train: Callable, model: str, data: list[str], folder: Path, recipe: RoundsRecipe,
                 log) -> str:
    """Train one stage (several seeds and their average when configured); the model it made."""
    if (folder / "summary.json").is_file() or (folder / "averaged.json").is_file():
        log(f"{folder}: finished, skipped")
        return str(folder)
    overrides = _flatten(getattr(recipe, stage))
    seeds = recipe.rounds.average_seeds if stage in recipe.rounds.average else 1
    if seeds == 1:
        post_recipe, raw = load_recipe(stage, overrides)
        train(model, data, folder, post_recipe, raw, log=log)
        return str(folder)
    runs = []
    for seed in range(seeds):
        run = folder.with_name(f"{folder.name}_seed{seed}")
        if not (run / "summary.json").is_file():
            post_recipe, raw = load_recipe(stage, overrides + [f"data.seed={seed}", f"train.seed={seed}"])
            train(model, data, run, post_recipe, raw, log=log)
        runs.append(str(run))
    average_models(runs, folder, log=log)
    (folder / "averaged.json").write_text(json.dumps({"runs": runs}) + "\n")
    return str(folder)


def run_rounds(model: str, prompts: list[str], prefs: list[str], sft_data: list[str], out: str | Path,
               recipe: RoundsRecipe, log=print) -> dict[str, Any]:
    """All rounds; per round the folders of its models and data."""
    out = Path(out)
    policy, new_pairs, summary = model, [], {}
    for r in range(1, recipe.rounds.n + 1):
        folder = out / f"round_{r}"
        log(f"round {r}: policy {policy}")
        rm = _train_stage("reward", reward, model, prefs + new_pairs, folder / "reward", recipe, log)
        samples = folder / "samples.jsonl"
        if not samples.is_file():
            rejection_sample(policy, rm, prompts, samples, recipe.rejection, log=log)
        pairs = str(default_pairs_path(samples))
        new_pairs.append(pairs)
        sft_model = _train_stage("sft", sft, model, sft_data + [str(samples)], folder / "sft", recipe, log)
        policy = _train_stage("dpo", dpo, sft_model, prefs + [pairs], folder / "dpo", recipe, log)
        summary[f"round_{r}"] = {"reward": rm, "samples": str(samples), "pairs": pairs, "sft": sft_model,
                                 "dpo": policy}
    summary["final"] = policy
    (out / "rounds.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary

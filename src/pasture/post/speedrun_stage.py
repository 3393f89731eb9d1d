"""The speedrun's post-training stage: the pre-trained model grows into a chat model.

No download: question–answer pairs come from the standard library's docstrings
(`pasture.post.qa`), some questions held out. From the pre-trained model it trains a reward
model (right answer against a wrong one), runs SFT, rejection-samples the SFT model with
the reward model, then runs DPO on the preferences plus the sampled pairs. It reports, on
the held-out questions: the answer loss of base -> SFT -> DPO, the reward model's pairwise
accuracy, DPO's reward accuracy, and sample conversations. Everything lands in RUN/post/.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pasture.post import qa
from pasture.post.data import Skipped, parse_preference, write_records
from pasture.post.dpo import dpo, pair_logprobs, preference_accuracy
from pasture.post.encode import ChatEncoder, encode_conversations, encode_pairs, pack
from pasture.post.models import load_encoder, load_model
from pasture.post.recipe import parse_recipe
from pasture.post.rejection import RejectionConfig, default_pairs_path, rejection_sample
from pasture.post.reward import model_scorer, pairwise_accuracy, reward
from pasture.post.reward_model import load_reward_model
from pasture.post.sft import sft
from pasture.post.trainer import PlainModelView, heldout_split
from pasture.serve import Engine, SamplingParams
from pasture.train.loss import IGNORE_INDEX
from pasture.train.metrics import read_metrics


@dataclass
class PostStageConfig:
    pairs: int = 320
    heldout_fraction: float = 0.15
    # sized so that the default speedrun (about 13 minutes before this stage on 2 cores) ends near 15
    reward_steps: int = 50
    sft_steps: int = 120
    dpo_steps: int = 40
    dpo_lr: float = 1e-4  # 3e-4 overfit the tiny model's training pairs in 60 steps (training reward accuracy 1.0)
    batch_size: int = 16
    seq_len: int = 256
    sample_prompts: int = 32  # training questions rejection-sampled
    k: int = 4
    max_tokens: int = 48
    samples_shown: int = 3
    seed: int = 0
    device: str = "cpu"
    progress: bool = False


def _recipe(cfg: PostStageConfig, steps: int, lr: float, **sections: dict[str, Any]):
    raw = {"train": {"steps": steps, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "device": cfg.device,
                     "seed": cfg.seed},
           "optim": {"lr": lr, "schedule": "cosine", "warmup_steps": max(1, steps // 10)},
           "data": {"heldout_fraction": 0.0, "seed": cfg.seed, "max_len": cfg.seq_len},
           "checkpoint": {"every": 0, "keep_last": 1}, "log": {"progress": cfg.progress}, **sections}
    return parse_recipe(raw), raw


@torch.no_grad()
def answer_loss(model_spec: str, encoder: ChatEncoder, conversations: list[dict[str, Any]], seq_len: int) -> float:
    """Mean NLL per answer token (the SFT loss) of held-out conversations."""
    model, _ = load_model(model_spec)
    view = PlainModelView(model.eval())
    examples = encode_conversations(encoder, [c["messages"] for c in conversations], seq_len + 1, Skipped())
    rows = pack(examples, seq_len, encoder.pad_id)
    total = view.token_loss_sum(rows["inputs"], rows["targets"], rows["document_ids"])
    return float(total / (rows["targets"] != IGNORE_INDEX).sum())


def sample_conversations(model_spec: str, encoder: ChatEncoder, questions: list[list[dict[str, Any]]],
                         max_tokens: int) -> list[dict[str, str]]:
    model, _ = load_model(model_spec)
    prompts = [encoder.encode(q, add_generation_prompt=True).tokens for q in questions]
    with Engine(model.eval(), max_batch_size=len(prompts), stop_token_ids=encoder.stop_ids) as engine:
        results = engine.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0))
    return [{"question": q[-1]["content"], "answer": encoder.decode(r.token_ids).strip()}
            for q, r in zip(questions, results)]


def post_train(run_dir: Path, base: str, cfg: PostStageConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Reward model, SFT, rejection sampling and DPO from the pre-trained `base`; the report's numbers."""
    out = Path(run_dir) / "post"
    quiet = (lambda *_: None) if not cfg.progress else log
    records = qa.preference_records(cfg.pairs, seed=cfg.seed)
    train_ids, held_ids = heldout_split(len(records), cfg.heldout_fraction, cfg.seed)
    train, held = [records[i] for i in train_ids], [records[i] for i in held_ids]
    data = out / "data"
    files = {"prefs": data / "train_prefs.jsonl", "sft": data / "train_sft.jsonl",
             "prompts": data / "prompts.jsonl", "heldout": data / "heldout_prefs.jsonl"}
    write_records(files["prefs"], train)
    write_records(files["sft"], qa.sft_records(train))
    write_records(files["prompts"], [{"messages": r["messages"]} for r in train[:cfg.sample_prompts]])
    write_records(files["heldout"], held)
    encoder = load_encoder(base)

    log("[post] reward model")
    reward(base, [str(files["prefs"])], out / "reward", *_recipe(cfg, cfg.reward_steps, 1e-3), log=quiet)
    held_pairs = encode_pairs(encoder, [parse_preference(r) for r in held], cfg.seq_len, Skipped())
    rm_accuracy = pairwise_accuracy(model_scorer(load_reward_model(out / "reward")), held_pairs, encoder.pad_id)

    log("[post] SFT")
    sft(base, [str(files["sft"])], out / "sft", *_recipe(cfg, cfg.sft_steps, 1e-3), log=quiet)

    log("[post] rejection sampling")
    samples = out / "samples.jsonl"
    sampled = rejection_sample(str(out / "sft"), str(out / "reward"), [str(files["prompts"])], samples,
                               RejectionConfig(k=cfg.k, max_tokens=cfg.max_tokens, seed=cfg.seed, device=cfg.device,
                                               progress=cfg.progress),
                               log=quiet)

    log("[post] DPO")
    dpo_inputs = [str(files["prefs"])] + ([str(default_pairs_path(samples))] if sampled["preference_pairs"] else [])
    dpo(str(out / "sft"), dpo_inputs, out / "dpo", *_recipe(cfg, cfg.dpo_steps, cfg.dpo_lr), log=quiet)
    device = torch.device("cpu")
    sft_model, _ = load_model(out / "sft")
    dpo_model, _ = load_model(out / "dpo")
    reference = pair_logprobs(PlainModelView(sft_model.eval()), held_pairs, device)
    dpo_heldout = preference_accuracy(pair_logprobs(PlainModelView(dpo_model.eval()), held_pairs, device), reference)

    held_sft = qa.sft_records(held)
    result = {
        "heldout_questions": len(held),
        "answer_loss": {name: answer_loss(spec, encoder, held_sft, cfg.seq_len)
                        for name, spec in (("base", base), ("sft", str(out / "sft")), ("dpo", str(out / "dpo")))},
        "reward_model_heldout_accuracy": rm_accuracy["accuracy"],
        "dpo_heldout_reward_accuracy": dpo_heldout["reward_accuracy"],
        "dpo_heldout_preference_accuracy": dpo_heldout["preference_accuracy"],
        "dpo_final_train_reward_accuracy": read_metrics(out / "dpo", "train")[-1]["reward_accuracy"],
        "rejection_sampling": {k: sampled[k] for k in ("prompts", "samples", "sft_records", "preference_pairs")},
        "samples": sample_conversations(str(out / "dpo"), encoder,
                                        [r["messages"] for r in held[:cfg.samples_shown]], cfg.max_tokens),
        "chat_model": str(out / "dpo"),
    }
    (out / "post.json").write_text(json.dumps(result, indent=2) + "\n")
    return result

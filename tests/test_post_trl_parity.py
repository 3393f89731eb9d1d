"""pasture's SFT and DPO against TRL's trainers: the same random-init tiny Llama (saved as a
Hugging Face folder both load), the same conversations through the same chat template, the
same hyperparameters, full batches (so data order cannot differ); pasture's formatting-token
masking off, as TRL does not mask. Per-step losses agree within 1e-3 for 20 steps."""

import json
import logging

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from post_fixtures import chatml_tokenizer, one_thread, qa_preferences, tiny_model
from pasture.model import save
from pasture.post.dpo import dpo
from pasture.post.models import save_encoder
from pasture.post.encode import encoder_for
from pasture.post.recipe import parse_recipe
from pasture.post.sft import sft
from pasture.train.metrics import read_metrics

STEPS, PAIRS, LR = 20, 8, 1e-3
# ChatML without the newline after <|im_end|>: TRL trains on everything after the generation
# prompt, pasture stops at the end of turn; with nothing after it the two agree token for token
CHATML_TIGHT = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    save(tiny_model(seed=7), folder, fmt="hf")
    tok = chatml_tokenizer()
    tok.chat_template = CHATML_TIGHT
    save_encoder(encoder_for(tok), folder)
    return folder


@pytest.fixture(scope="module")
def records():
    return qa_preferences(PAIRS)


def pasture_recipe(**sections):
    raw = {"train": {"steps": STEPS, "batch_size": PAIRS, "seq_len": 256, "device": "cpu"},
           "optim": {"lr": LR, "grad_clip": 1.0}, "data": {"heldout_fraction": 0.0},
           "checkpoint": {"every": 0, "final": False}, "log": {"progress": False}, **sections}
    return parse_recipe(raw), raw


def trl_args(config_cls, out, **extra):
    return config_cls(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=PAIRS, learning_rate=LR,
                      lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
                      adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, logging_steps=1, bf16=False,
                      use_cpu=True, activation_checkpointing=False, report_to=[], save_strategy="no",
                      dataloader_num_workers=0, seed=0, disable_tqdm=True, **extra)


def trl_losses(trainer) -> list[float]:
    logging.getLogger("transformers").setLevel(logging.ERROR)
    trainer.train()
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_sft_losses_match_trl(model_dir, records, tmp_path):
    conversations = [{"messages": [*r["messages"], r["chosen"]]} for r in records]
    recipe, raw = pasture_recipe()
    sft(str(model_dir), [write(tmp_path / "sft.jsonl", conversations)], tmp_path / "ours", recipe, raw,
        log=lambda *_: None)
    ours = [row["loss"] for row in read_metrics(tmp_path / "ours", "train")]
    data = Dataset.from_list([{"prompt": r["messages"], "completion": [r["chosen"]]} for r in records])
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                         args=trl_args(SFTConfig, tmp_path / "trl", completion_only_loss=True, packing=False),
                         train_dataset=data, processing_class=AutoTokenizer.from_pretrained(model_dir))
    theirs = trl_losses(trainer)
    assert len(ours) == len(theirs) == STEPS
    assert ours[-1] < ours[0] - 0.1  # it trains
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-3, list(zip(ours, theirs))


def test_dpo_losses_match_trl(model_dir, records, tmp_path):
    recipe, raw = pasture_recipe(dpo={"mask_format_tokens": False, "beta": 0.1, "nll_weight": 0.2})
    dpo(str(model_dir), [write(tmp_path / "prefs.jsonl", records)], tmp_path / "ours", recipe, raw,
        log=lambda *_: None)
    ours = [row["loss"] for row in read_metrics(tmp_path / "ours", "train")]
    data = Dataset.from_list([{"prompt": r["messages"], "chosen": [r["chosen"]], "rejected": [r["rejected"]]}
                              for r in records])
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                         args=trl_args(DPOConfig, tmp_path / "trl", beta=0.1, loss_type=["sigmoid", "sft"],
                                       loss_weights=[1.0, 0.2]),
                         train_dataset=data, processing_class=AutoTokenizer.from_pretrained(model_dir))
    theirs = trl_losses(trainer)
    assert len(ours) == len(theirs) == STEPS
    assert ours[-1] < ours[0] - 0.05
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-3, list(zip(ours, theirs))

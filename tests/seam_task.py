"""A reward model trained through the shared training core, as post-training will plug in.

Pairwise preference loss (Bradley-Terry, as Llama 3's reward model) over a scalar head
on the Transformer's last hidden state; synthetic pairs where the chosen sequence is an
arithmetic progression and the rejected one is noise. Run as a script under torchrun
for the distributed half of tests/test_train_seam.py:

    python -m torch.distributed.run --nproc-per-node=2 tests/seam_task.py RUN_DIR STEPS INIT [resume]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pasture.model.config import ModelConfig, preset
from pasture.runtime import init_distributed, rank_and_world, resolve_device
from pasture.train.loop import LoopConfig, train
from pasture.train.parallel import ParallelConfig, resolve_layout
from pasture.train.runner import RunnerSpec, build_runner
from pasture.train.schedule import OptimConfig
from pasture.train.task import Batch, LossOutput, MicroBatching, ModelView, StepBatches

VOCAB, SEQ_LEN, PAIRS_PER_STEP = 64, 16, 8
CONFIG = preset("tiny").replace(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32, vocab_size=VOCAB)


class RewardModel(nn.Module):
    """A Transformer with a scalar head on its last position's hidden state."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer
        self.score = nn.Linear(transformer.config.dim, 1, bias=False)
        nn.init.zeros_(self.score.weight)  # the same start on every layout (FSDP draws its own randoms)

    def init_weights(self, buffer_device=None) -> None:
        self.transformer.init_weights(buffer_device=buffer_device)
        nn.init.zeros_(self.score.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(tokens, return_hidden=True)
        return self.score(hidden[:, -1]).squeeze(-1).float()


class PairwiseRewardLoss:
    """-log sigmoid(r_chosen - r_rejected), summed over pairs; accuracy and margin as extra metrics."""

    def count_targets(self, batch: Batch) -> int:
        return batch["chosen"].shape[0]

    def loss(self, model: ModelView, batch: Batch) -> LossOutput:
        pairs = batch["chosen"].shape[0]
        scores = model.module(torch.cat([batch["chosen"], batch["rejected"]]))  # one forward for both
        margin = scores[:pairs] - scores[pairs:]
        return LossOutput(-F.logsigmoid(margin).sum(),
                          {"reward_accuracy": (margin > 0).float().sum(), "reward_margin": margin.detach().sum()})


def preference_pair(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair `index`: a progression in the lower half of the vocabulary (chosen) and random
    tokens of the upper half after the same first token (rejected)."""
    rng = np.random.default_rng(index)
    half = VOCAB // 2
    start, stride = int(rng.integers(0, half)), int(rng.integers(1, 4))
    chosen = (start + stride * np.arange(SEQ_LEN)) % half
    rejected = np.concatenate([[start], rng.integers(half, VOCAB, SEQ_LEN - 1)])
    return chosen, rejected


class PreferenceTask:
    """The `TrainTask`: each data-parallel rank reads its own consecutive pairs of every step."""

    def __init__(self, dp_rank: int, dp_size: int) -> None:
        self.objective = PairwiseRewardLoss()
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.next_pair = dp_rank * PAIRS_PER_STEP // dp_size  # resumable position in the pair stream

    def wrap_model(self, transformer: nn.Module) -> nn.Module:
        return RewardModel(transformer)

    def next_step(self, step: int, tokens_seen: int, split: Callable[[int], MicroBatching],
                  annealing: bool = False) -> StepBatches:
        cut = split(PAIRS_PER_STEP)
        batches = []
        for _ in range(cut.count):
            pairs = [preference_pair(self.next_pair + i) for i in range(cut.rows)]
            self.next_pair += cut.rows
            batches.append({"chosen": torch.tensor(np.stack([c for c, _ in pairs])),
                            "rejected": torch.tensor(np.stack([r for _, r in pairs]))})
        self.next_pair += PAIRS_PER_STEP - cut.rows * cut.count  # skip the other ranks' pairs
        return StepBatches(batches, tokens=2 * PAIRS_PER_STEP * SEQ_LEN, seq_len=SEQ_LEN,
                           metrics={"pairs": PAIRS_PER_STEP})

    def state_dict(self) -> dict[str, Any]:
        return {"pairs": {"next_pair": self.next_pair}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_pair = state["pairs"]["next_pair"]

    def write_run_files(self, run_dir: Path) -> None:
        pass


def train_reward_model(run_dir: Path, steps: int, init_from: str, resume: str = "never",
                       micro_batch_size: int = 0, config: ModelConfig = CONFIG) -> dict[str, Any]:
    device = resolve_device("cpu")
    rank, world = init_distributed(device)
    parallel = ParallelConfig()
    layout = resolve_layout(parallel, world)
    task = PreferenceTask(layout.coordinates(rank)["dp"], layout.dp)
    runner = build_runner(RunnerSpec(config, parallel, layout, device, init_from=init_from,
                                     micro_batch_size=micro_batch_size), wrap_model=task.wrap_model)
    loop = LoopConfig(Path(run_dir), steps, OptimConfig(lr=1e-2, warmup_steps=1, weight_decay=0.0), resume=resume,
                      checkpoint_every=3, keep_last=5, progress=False, tensorboard=False, name="reward",
                      final_model=False)  # RUN/model/ holds a plain Transformer; a reward model exports its own
    return train(task, runner, loop, config, {"task": "reward"}, log=lambda *_: None)


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_dir, steps, init = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    train_reward_model(Path(run_dir), steps, init, resume=sys.argv[4] if len(sys.argv) > 4 else "never")
    if rank_and_world()[1] > 1:
        torch.distributed.destroy_process_group()

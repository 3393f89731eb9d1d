"""Chunked loss A/B: pasture's loss (gradients taken chunk by chunk in the forward) against
the loss it replaced (checkpointed chunks through autograd's cross-entropy), side by side.

  python benchmarks/loss_ab.py                                   # the loss alone
  python benchmarks/loss_ab.py --tokens runs/speedrun/tokens     # and `pasture pretrain tiny` steps

1. The loss alone: hidden states [tokens, dim] and a [vocab, dim] output matrix, forward +
   backward, timed for each side; the two sides' losses and gradients are compared first.
2. With --tokens (a `pasture tokenize` folder, e.g. the speedrun's): the `tiny` recipe's
   training steps (16 x 256 tokens, no batch ramp), mean seconds per step over the steps after
   the first `--skip`, with the reference loss patched into pre-training ("before") and with
   pasture's loss at several chunk sizes.
Run it under `flock /tmp/pasture-bench.lock` so timings never overlap.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from pasture.train import pretrain, runner
from pasture.train.loss import cross_entropy_sum
from pasture.train.metrics import read_metrics
from pasture.train.recipe import load_recipe, parse_recipe


def checkpointed_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   chunk_tokens: int = 8192, compiled: bool = False) -> torch.Tensor:
    """The reference: project each chunk of rows and take autograd's cross-entropy on it, with
    the chunk checkpointed (its logits recomputed in the backward). `compiled` is accepted and
    ignored, so it can stand in for pasture's loss in a training run."""
    rows, labels = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)

    def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy((h @ weight.t()).float(), t, ignore_index=-100, reduction="sum")

    return sum(checkpoint(chunk_loss, rows[i:i + chunk_tokens], labels[i:i + chunk_tokens], use_reentrant=False)
               for i in range(0, rows.shape[0], chunk_tokens))


def time_loss(loss_fn, hidden, weight, targets, chunk_tokens: int, repeats: int) -> tuple[float, torch.Tensor, tuple]:
    """Median seconds of forward + backward, with the last loss and gradients."""
    times = []
    for _ in range(repeats + 1):  # the first is a warmup
        h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
        t0 = time.perf_counter()
        loss = loss_fn(h, w, targets, chunk_tokens)
        loss.backward()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2], loss.detach(), (h.grad, w.grad)


def loss_alone(tokens: int, dim: int, vocab: int, chunk_tokens: int, repeats: int) -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, dim, generator=generator)
    weight = torch.randn(vocab, dim, generator=generator) * dim**-0.5
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    before_s, before_loss, before_grads = time_loss(checkpointed_cross_entropy_sum, hidden, weight, targets,
                                                    chunk_tokens, repeats)
    ours_s, ours_loss, ours_grads = time_loss(cross_entropy_sum, hidden, weight, targets, chunk_tokens, repeats)
    grad_diff = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(ours_grads, before_grads))
    print(f"loss alone: {tokens} x {dim} hidden, vocab {vocab}, chunks of {chunk_tokens}, "
          f"{torch.get_num_threads()} threads, median of {repeats}")
    print(f"  losses {before_loss.item():.6f} (before) {ours_loss.item():.6f} (pasture); "
          f"max relative gradient difference {grad_diff:.1e}")
    print("| loss | ms (forward + backward) |\n|---|---:|")
    print(f"| before: checkpointed chunks, autograd cross-entropy | {before_s * 1e3:.0f} |")
    print(f"| pasture: gradients in the forward | {ours_s * 1e3:.0f} |")
    print(f"speed ratio pasture / before: {before_s / ours_s:.2f}x")


def training_steps(tokens_dir: str, steps: int, skip: int, chunk_tokens: int, before: bool, runs: Path) -> tuple[float, float]:
    """(mean s/step after `skip` steps, loss at the last step) for `pasture pretrain tiny`."""
    name = f"{'before' if before else 'pasture'}-{chunk_tokens}"
    raw = load_recipe("tiny", [
        f"data.train={json.dumps([tokens_dir])}", f'log.dir="{runs / name}"', f"train.steps={steps}",
        f"optim.warmup_steps={min(30, steps)}",
        "train.anneal_steps=0", "train.batch_ramp=[]", f"train.loss_chunk_tokens={chunk_tokens}",
        "eval.every=1000", "eval.batches=2", "eval.prompts=[]", "checkpoint.every=1000", "checkpoint.final=false",
        "log.every=1", "log.progress=false", "log.tensorboard=false"])
    ours = runner.cross_entropy_sum
    if before:  # the training step calls the loss through the runner module's namespace
        runner.cross_entropy_sum = checkpointed_cross_entropy_sum
    try:
        pretrain.pretrain(parse_recipe(raw), raw, log=lambda *_: None)
    finally:
        runner.cross_entropy_sum = ours
    records = read_metrics(runs / name, "train")
    step_times = [r["step_time_s"] for r in records[skip:]]
    return sum(step_times) / len(step_times), records[-1]["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", help="a `pasture tokenize` folder: also time the tiny recipe's training steps")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=10, help="training steps left out of the mean (warmup)")
    parser.add_argument("--chunks", default="8192,2048,1024", help="chunk sizes for pasture's loss in training")
    parser.add_argument("--loss-tokens", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4352)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    print(f"torch {torch.__version__}")
    loss_alone(args.loss_tokens, args.dim, args.vocab, 1024, args.repeats)
    if not args.tokens:
        return
    chunks = [int(c) for c in args.chunks.split(",")]
    with tempfile.TemporaryDirectory(prefix="loss-ab-") as tmp:
        rows = [("before (checkpointed chunks, autograd cross-entropy)", chunks[0],
                 *training_steps(args.tokens, args.steps, args.skip, chunks[0], True, Path(tmp)))]
        for chunk in chunks:
            rows.append(("gradients in the forward", chunk,
                         *training_steps(args.tokens, args.steps, args.skip, chunk, False, Path(tmp))))
    print(f"\npasture pretrain tiny on {args.tokens}: {args.steps} steps of 16 x 256 tokens, "
          f"mean s/step over steps {args.skip + 1}-{args.steps}")
    print(f"| loss | chunk tokens | s/step | vs before | loss at step {args.steps} |\n|---|---:|---:|---:|---:|")
    for name, chunk, seconds, loss in rows:
        print(f"| {name} | {chunk:,} | {seconds:.3f} | {rows[0][2] / seconds:.2f}x | {loss:.6f} |")


if __name__ == "__main__":
    main()

"""`pasture plan RECIPE`: parameters, FLOPs and memory per GPU of a recipe's parallel layout."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="check that a pre-training recipe's parallel layout fits before launching it",
        description="Print parameters, training FLOPs per token and memory per GPU (weights, gradients, "
        "optimizer, activations with and without activation checkpointing) for the recipe's [parallel] "
        "layout at each sequence length, and whether it fits. Same recipe loading and overrides as "
        "`pasture pretrain`, e.g. `pasture plan 405b --gpus 16384`.",
    )
    p.add_argument("recipe", help="shipped recipe name or path to a TOML recipe")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, values as TOML literals")
    p.add_argument("--gpus", type=int, default=None,
                   help="world size (default: the product of the layout, when parallel.dp_shard is not -1)")
    p.add_argument("--gpu-memory", type=float, default=80.0, metavar="GiB", help="memory per GPU (default 80)")
    p.set_defaults(func=_plan)


def _plan(args: argparse.Namespace) -> int:
    from pasture.errors import PastureError
    from pasture.model.config import preset
    from pasture.train import parallel
    from pasture.train.plan import render
    from pasture.train.recipe import build_model_config, load_recipe, parse_recipe
    from pasture.train.schedule import schedule_value

    recipe = parse_recipe(load_recipe(args.recipe, args.overrides))
    cfg, t = recipe.parallel, recipe.train
    gpus = args.gpus
    if gpus is None:
        if cfg.dp_shard == -1:
            raise PastureError("parallel.dp_shard=-1 takes whatever the world size leaves: give --gpus N")
        gpus = cfg.dp_replicate * cfg.dp_shard * cfg.tp * cfg.cp * cfg.pp
    config = build_model_config(recipe, recipe.model.overrides.get("vocab_size", preset(recipe.model.preset).vocab_size))
    layout = parallel.resolve_layout(cfg, gpus)
    seq_lens = [int(s) for _, s in t.seq_len_schedule] if t.seq_len_schedule else [t.seq_len]
    parallel.validate(cfg, layout, config, seq_lens=seq_lens)
    final_tokens = t.batch_ramp[-1][1] if t.batch_ramp else None
    seq_len = seq_lens[-1]
    batch_size = int(final_tokens) // seq_len if final_tokens else t.batch_size
    micro = t.micro_batch_size or max(1, batch_size // layout.dp)
    _, per_run = parallel.check_batch(batch_size, micro, cfg, layout)
    print(render(recipe.name or args.recipe, config, layout, cfg, seq_lens, micro, per_run, args.gpu_memory,
                 t.loss_chunk_tokens, t.float8))
    return 0

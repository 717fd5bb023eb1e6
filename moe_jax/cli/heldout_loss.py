"""`moe-jax heldout-loss`: held-out cross-entropy of a run's newest checkpoint, the fair
way to compare two runs whose logged training losses are single noisy batches (e.g.
FP8 vs bfloat16).

    moe-jax heldout-loss --config experiments/pretrain_arith.py:tiny --workdir runs/fp8_True \
        --config.model.dtype=bfloat16 --config.model.fp8=True

Prints one JSON line: the step, and the response-token cross-entropy averaged over
`--batches` packed batches of the test split (the same batches for every run with the
same data settings and --seed), computed as the training step computes its loss, with
the model config's dispatch. --config defaults to the config the run recorded.
"""

from __future__ import annotations

import json

from moe_jax.cli.arguments import add_config_arguments, error, run_config


def heldout_cross_entropy(config, workdir: str, batches: int = 8, batch_size: int = 32, seed: int = 7,
                          log=print) -> dict:
    """The command as a function: {"workdir", "step", "heldout_ce", "batches"}."""
    import jax
    import numpy as np

    from moe_jax.data.pipeline import train_dataset
    from moe_jax.data.splits import load_data
    from moe_jax.data.tokenizer import get_tokenizer
    from moe_jax.models.transformer import Transformer
    from moe_jax.train.loader import load_model
    from moe_jax.train.losses import LossWeights
    from moe_jax.train.step import forward_with_loss

    loaded = load_model(workdir, config.model, log=log)
    model = Transformer.from_config(loaded.model_config)
    _, held_out = load_data(config, workdir)
    packed = iter(train_dataset(held_out, get_tokenizer(config.data.tokenizer), global_batch_size=batch_size,
                                seq_len=config.data.seq_len, seed=seed, num_epochs=1))
    weights = LossWeights.from_config(loaded.model_config)
    ce = jax.jit(lambda params, bias, batch: forward_with_loss(model, params, bias, batch, weights)[1][0]["ce_loss"])
    losses = []
    for batch in packed:
        losses.append(float(ce(loaded.params, loaded.router_bias, batch)))
        if len(losses) == batches:
            break
    else:
        raise ValueError(f"--batches {batches}: the test split ({len(held_out)} problems) packs into "
                         f"only {len(losses)} batches of {batch_size}")
    return {"workdir": workdir, "step": loaded.step, "heldout_ce": round(float(np.mean(losses)), 5),
            "batches": batches}


def _heldout_loss(args) -> int:
    from moe_jax.train.checkpoint import CorruptCheckpointError

    try:
        config = run_config(args, args.workdir)
        result = heldout_cross_entropy(config, args.workdir, args.batches, args.batch_size, args.seed,
                                       log=lambda *_: None)
    except (FileNotFoundError, ValueError, CorruptCheckpointError) as e:
        return error("heldout-loss", e)
    print(json.dumps(result))
    return 0


def add_heldout_loss_command(subparsers) -> None:
    p = subparsers.add_parser("heldout-loss", help="held-out cross-entropy of a run's newest checkpoint")
    add_config_arguments(p, required=False)
    p.add_argument("--workdir", required=True, help="training workdir (its newest checkpoint) or model directory")
    p.add_argument("--batches", type=int, default=8, help="packed test batches to average over (default 8)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per batch (default 32)")
    p.add_argument("--seed", type=int, default=7, help="the packing order's seed (default 7)")
    p.set_defaults(func=_heldout_loss)

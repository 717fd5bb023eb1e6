"""Held-out cross-entropy of a run's newest checkpoint: the fair way to compare two runs
whose logged training losses are single noisy batches (e.g. FP8 vs bfloat16).

    python -m moe_jax.analysis.heldout_loss --config experiments/pretrain_arith.py:tiny \
        --workdir runs/fp8_True --config.model.dtype=bfloat16 --config.model.fp8=True

Prints one JSON line: the step, and the response-token cross-entropy averaged over
`--batches` packed batches of the test split (the same batches for every run with the
same data settings and --seed).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np

from moe_jax.config import load_config, split_overrides
from moe_jax.data.pipeline import train_dataset
from moe_jax.data.splits import load_data
from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.models.transformer import Transformer
from moe_jax.train.loader import load_model
from moe_jax.train.step import forward_with_loss
from moe_jax.train.losses import LossWeights


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=7)
    rest, overrides = split_overrides(sys.argv[1:])
    a = p.parse_args(rest)
    config = load_config(a.config, a.override + overrides)
    model = Transformer.from_config(config.model)
    state = load_model(a.workdir, config.model)
    _, test_source = load_data(config, a.workdir)
    batches = iter(train_dataset(test_source, get_tokenizer(config.data.tokenizer),
                                 global_batch_size=a.batch_size, seq_len=config.data.seq_len,
                                 seed=a.seed, num_epochs=1))
    weights = LossWeights.from_config(config.model)
    ce = jax.jit(lambda params, bias, batch: forward_with_loss(model, params, bias, batch, weights)[1][0]["ce_loss"])
    losses = [float(ce(state.params, state.router_bias, next(batches))) for _ in range(a.batches)]
    print(json.dumps({"workdir": a.workdir, "step": int(state.step),
                      "heldout_ce": round(float(np.mean(losses)), 5), "batches": a.batches}))


if __name__ == "__main__":
    main()

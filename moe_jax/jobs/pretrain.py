"""The `pretrain` (and `sft`) job: the training loop from scratch, then held-out exact match.

An experiment file may define `make_train_step(model, optimizer, config)`; the loop then
jits that step instead of moe_jax.train.step's.
"""

from __future__ import annotations

from moe_jax.jobs.summary import Summary
from moe_jax.train.loop import train_and_evaluate, validate_training_config


def validate(config) -> None:
    validate_training_config(config)


def summarize(job: str, result: dict) -> Summary:
    """The training loop's summary dict as a Summary."""
    return Summary(job=job, metric="held-out exact match", value=result["exact_match"],
                   steps=result["step"], seconds=result["train_seconds"],
                   examples=result["eval_examples"], unit=f"{result['task']} problems",
                   details=result)


def run(config, workdir: str, *, experiment=None, log=print) -> Summary:
    make_step = getattr(experiment, "make_train_step", None)
    result = train_and_evaluate(config, workdir, log=log, make_step=make_step)
    return summarize(config.get("job", "pretrain"), result)

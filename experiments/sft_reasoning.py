"""Supervised fine-tuning on worked solutions of the synthetic reasoning tasks.

The model learns to write a worked solution and then the answer (see
moe_jax/data/tasks); held-out exact match is checked by the task's verifier. This is
the starting point of experiments/grpo_reasoning.py, so the `tiny` variant stops early
on purpose: a model that is right on some problems and wrong on others is what GRPO can
improve.

    python -m moe_jax.main --config=experiments/sft_reasoning.py:tiny --workdir=runs/sft

Variants: `tiny` (arithmetic, 2 CPU cores), `countdown_tiny` (Countdown, 2 CPU cores),
`arith` (the main job's 2-3 operand problems and recipe, 1000 steps, 2 CPU cores),
`slip` (the main job, fully trained, on solutions from a flawed teacher that forgets the
units carry or borrow at 70% of steps; the answers it is judged on stay right),
`small` (arithmetic, one accelerator; the model of pretrain_arith.py:small).
"""

from moe_jax.jobs import recipes

VARIANTS = recipes.SFT_VARIANTS


def get_config(arg=None):
    return recipes.sft(arg or "tiny")


def sweep():
    """SFT length: how far to train before handing over to GRPO."""
    return [{"config.train.steps": steps} for steps in (300, 500, 800)]

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

import os

import ml_collections

from moe_jax.config import load_config

HERE = os.path.dirname(os.path.abspath(__file__))

VARIANTS = ("tiny", "countdown_tiny", "arith", "slip", "small")


def get_config(arg=None):
    variant = arg or "tiny"
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: expected one of {VARIANTS}")
    base = "small" if variant == "small" else "tiny"
    c = load_config(f"{os.path.join(HERE, 'pretrain_arith.py')}:{base}")
    if variant == "arith":
        # The README's main job (2-3 operands, batch 16) on a shorter schedule: annealed,
        # but stopped while it is still often wrong.
        c.train.steps = 1000
    elif variant == "slip":
        # The whole main-job schedule: the model learns the teacher's arithmetic well,
        # slip included. Greedy decoding then always forgets the carry (the teacher's
        # likelier choice), so it is right only on problems without one.
        c.data.difficulty.carry_slip = 0.7
    elif base == "tiny":
        # The recipe the recorded SFT and GRPO figures were measured with (RESULTS.md);
        # pretrain_arith's own tiny default has since moved to batch 16 and dropless.
        c.train.batch_size = 32
        c.model.dispatch = "capacity"
    if variant == "tiny":
        # Two operands (one running total): learnt to a useful but imperfect level in
        # a few minutes, which leaves GRPO something to fix.
        c.data.difficulty.max_operands = 2
        c.train.steps = 800
    elif variant == "countdown_tiny":
        c.data.task = "countdown"
        c.data.difficulty = ml_collections.ConfigDict({"min_numbers": 3, "max_numbers": 3})
        c.train.steps = 800
        c.eval.max_new_tokens = 64
    c.train.checkpoint_every = min(c.train.checkpoint_every, c.train.steps)
    c.eval.every = 0
    c.eval.final_num_examples = 500
    return c


def sweep():
    """SFT length: how far to train before handing over to GRPO."""
    return [{"config.train.steps": steps} for steps in (300, 500, 800)]

"""LoRA vs full fine-tuning on a task shift: from 2-3 operands to 4 operands.

1. Pretrain the `tiny` arithmetic MoE (experiments/pretrain_arith.py) on 2-3 operand
   problems with up to 2-digit operands, + and - only.
2. Shift: 4-operand problems. The pretrained model has never written a chain of four
   terms; held-out accuracy on them starts near zero.
3. From the same pretrained weights, fine-tune (a) every parameter and (b) rank-r LoRA
   adapters on attention, dense MLP, shared and routed experts (the base frozen), with
   the same data, steps and batch. Report both held-out exact matches on 4-operand
   problems, the adapters' share of the parameters and both optimizer states' bytes.

    python -m moe_jax.main --config=experiments/lora_shift.py:tiny --workdir=/tmp/lora_shift

The run is the package's `lora` job (moe_jax/jobs/lora.py); this file is its config.

`arith` starts from the README's main job instead (2-3 operands of up to 3 digits) and
shifts to 4 such operands:

    python -m moe_jax.main --config=experiments/pretrain_arith.py:tiny --workdir=runs/arith
    python -m moe_jax.main --config=experiments/lora_shift.py:arith --workdir=runs/lora_arith \
        --config.finetune.base_workdir=runs/arith

`sweep()` varies the LoRA rank and targets. `runlocal` is a seconds-long smoke variant.
"""

import ml_collections

from moe_jax.jobs import recipes
from moe_jax.lora.adapters import default_lora_config

VARIANTS = ("tiny", "runlocal", "arith")


def get_config(arg=None):
    variant = arg or "tiny"
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: expected one of {VARIANTS}")
    if variant == "arith":
        return _arith_config()
    c = recipes.shift(variant)
    c.job = "lora"
    small = variant == "runlocal"
    c.finetune = ml_collections.ConfigDict()
    c.finetune.steps = 3 if small else 150
    c.finetune.full_learning_rate = 1e-3
    c.finetune.lora_learning_rate = 5e-3  # adapters start at zero and need a larger step
    c.finetune.warmup_steps = 1 if small else 20
    c.finetune.base_workdir = ""  # a run (workdir or model directory) of c.model; empty: pretrain here
    c.lora = default_lora_config()
    c.lora.rank, c.lora.alpha = 8, 16.0
    return c


def _arith_config():
    """The README's main job (2-3 operands of up to 3 digits) as the base, read from
    --config.finetune.base_workdir; the shift is to 4 such operands."""
    c = get_config("tiny")
    main_job = recipes.arithmetic("tiny")
    c.model, c.optimizer = main_job.model, main_job.optimizer
    c.data.difficulty = main_job.data.difficulty
    c.data.shifted_difficulty = ml_collections.ConfigDict(
        {"min_operands": 4, "max_operands": 4, "max_digits": 3,
         "fixed_width": main_job.data.difficulty.fixed_width})  # written as the base model writes
    c.data.num_train, c.data.num_test = main_job.data.num_train, 500
    c.train.batch_size, c.train.steps = main_job.train.batch_size, main_job.train.steps
    c.finetune.steps, c.finetune.warmup_steps = 300, 30
    c.eval.max_new_tokens = 64
    return c


def sweep():
    """LoRA rank and targets, as overrides of `tiny`."""
    return ([{"config.lora.rank": r} for r in (2, 8, 32)]
            + [{"config.lora.targets": ("attention",)},
               {"config.lora.targets": ("attention", "shared_experts", "dense_mlp")}])

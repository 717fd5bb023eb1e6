"""Distilling a trained MoE teacher into a smaller MoE student, against the same student
trained from scratch for the same steps.

Teacher: the `tiny` arithmetic model (experiments/pretrain_arith.py: 4 layers, 8 routed
experts top-2 + 1 shared) trained `distill.teacher_steps` steps on 2-3 operand +/-
problems with up to 2-digit operands. Student: 2 layers (1 dense + 1 MoE) with 4 routed
experts top-2, trained `distill.student_steps` (a few hundred fewer than the teacher)
on the same batches, twice from the same initialisation:

    scratch    next-token cross-entropy on the response tokens
    distilled  alpha * tau^2 * KL(teacher_tau || student_tau) + (1 - alpha) * CE, tau
               annealed from tau_start to tau_end (moe_jax.distill)

Both are scored by held-out exact match (greedy decoding, the task's verifier).

    python -m moe_jax.main --config=experiments/distill.py:tiny --workdir=/tmp/distill

`arith` distils the README's main job (experiments/pretrain_arith.py:tiny, 2-3 operands
of up to 3 digits) into the same student, on the main job's data:

    python -m moe_jax.main --config=experiments/pretrain_arith.py:tiny --workdir=runs/arith
    python -m moe_jax.main --config=experiments/distill.py:arith --workdir=runs/distill_arith \
        --config.distill.teacher_workdir=runs/arith

`--config.distill.teacher_workdir=DIR` reads the teacher from any run of the teacher's
config: a training workdir or a model directory (e.g. <workdir>/pretrained of
experiments/lora_shift.py, which is this teacher trained the same way). The run is the
package's `distill` job (moe_jax/jobs/distill.py). `sweep()` varies alpha and the schedule.
"""

import ml_collections

from moe_jax.jobs import recipes

VARIANTS = ("tiny", "runlocal", "arith")


def get_config(arg=None):
    variant = arg or "tiny"
    small = variant == "runlocal"
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: expected one of {VARIANTS}")
    c = recipes.shift("tiny" if variant == "arith" else variant)
    del c.data["shifted_difficulty"]
    if variant == "arith":  # the README's main job is the teacher: same model, data, batch
        main_job = recipes.arithmetic("tiny")
        c.model, c.data = main_job.model, main_job.data
        c.train.batch_size = main_job.train.batch_size
        c.optimizer = main_job.optimizer
        c.eval.max_new_tokens = main_job.eval.max_new_tokens
    c.job = "distill"
    c.student_model = c.model.copy_and_resolve_references()
    c.student_model.num_layers, c.student_model.num_dense_layers = (1, 0) if small else (2, 1)
    c.student_model.num_experts, c.student_model.top_k = 4, 2

    c.distill = ml_collections.ConfigDict()
    c.distill.teacher_steps = 6 if small else 400
    c.distill.student_steps = 3 if small else 200
    if variant == "arith":  # the teacher comes from --config.distill.teacher_workdir
        c.distill.teacher_steps = c.train.steps
        c.distill.student_steps = 1200
    c.distill.teacher_workdir = ""  # a workdir or model directory of the teacher; empty: train it
    c.distill.alpha = 0.5
    c.distill.schedule = "linear"
    c.distill.tau_start = 5.0
    c.distill.tau_end = 1.0
    c.train.steps = c.distill.teacher_steps
    c.optimizer.total_steps = c.distill.teacher_steps
    return c


def sweep():
    return ([{"config.distill.alpha": a} for a in (0.25, 0.5, 0.9)]
            + [{"config.distill.schedule": "cosine"},
               {"config.distill.schedule": "constant", "config.distill.tau_start": 1.0}])

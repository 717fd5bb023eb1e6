"""The `distill` job: a trained MoE teacher distilled into a smaller MoE student, against
the same student trained from scratch for the same steps on the same batches.

    scratch    next-token cross-entropy on the response tokens
    distilled  alpha * tau^2 * KL(teacher_tau || student_tau) + (1 - alpha) * CE, tau
               annealed from tau_start to tau_end (moe_jax.distill)

The teacher is `distill.teacher_workdir` (a training workdir or a model directory), or
one trained here for distill.teacher_steps (saved as <workdir>/teacher and reused).
Both students are scored by held-out exact match.
"""

from __future__ import annotations

import os
import time


from moe_jax.data.splits import load_data
from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.distill.schedule import SCHEDULES, temperature_schedule
from moe_jax.distill.step import make_distill_train_step
from moe_jax.jobs import fixed_budget as fb
from moe_jax.jobs.pretrain import validate as validate_training
from moe_jax.jobs.summary import Summary
from moe_jax.models.config import ConfigError, validate_model_config
from moe_jax.models.param_count import count_parameters
from moe_jax.models.transformer import Transformer
from moe_jax.moe.router import BIAS_COLLECTION
from moe_jax.train.losses import LossWeights
from moe_jax.train.placement import Placement
from moe_jax.train.step import make_train_step


def validate(c) -> None:
    validate_training(c)
    for section in ("distill", "student_model"):
        if section not in c:
            raise ConfigError(section, None, f"a `{section}` section (see experiments/distill.py)")
    validate_model_config(c.student_model)
    d = c.distill
    if d.schedule not in SCHEDULES:
        raise ConfigError("distill.schedule", d.schedule, f"one of {list(SCHEDULES)}")
    if not 0.0 <= d.alpha <= 1.0:
        raise ConfigError("distill.alpha", d.alpha, "a number in [0, 1]")
    if d.student_steps >= d.teacher_steps and not d.teacher_workdir:
        raise ConfigError("distill.student_steps", d.student_steps,
                          f"fewer than distill.teacher_steps = {d.teacher_steps} (the teacher trains longer)")


def teacher(c, workdir, tokenizer, train_source, log, placement=None):
    """(params, router_bias, seconds spent training it)."""
    return fb.start_model(c, workdir, read_from=c.distill.teacher_workdir, field="distill.teacher_workdir",
                          name="teacher", steps=c.distill.teacher_steps, train_source=train_source,
                          tokenizer=tokenizer, log=log, placement=placement or Placement.from_config(c))


def run(c, workdir: str, *, experiment=None, log=print) -> Summary:
    del experiment
    validate(c)
    os.makedirs(workdir, exist_ok=True)
    d = c.distill
    placement = Placement.from_config(c)
    placement.check_model(c.model)
    placement.check_model(c.student_model)
    log(placement.describe())
    t0 = time.time()
    tokenizer = get_tokenizer(c.data.tokenizer)
    train_source, test_source = load_data(c, workdir)
    t_params, t_bias, teacher_seconds = teacher(c, workdir, tokenizer, train_source, log, placement)
    teacher_acc, count = fb.accuracy(c, c.model, t_params, t_bias, test_source, tokenizer, placement)
    log(f"teacher: {teacher_acc:.1%} held-out exact match")

    teacher_model = Transformer.from_config(c.model)
    student = Transformer.from_config(c.student_model)
    weights, rate = LossWeights.from_config(c.student_model), c.student_model.bias_update_rate
    t_params, t_bias = placement.put_params(teacher_model, t_params, t_bias)
    teacher_vars = {"params": t_params, BIAS_COLLECTION: t_bias}
    results = {}
    for mode in ("scratch", "distilled"):
        opt = fb.optimizer(c, c.optimizer.learning_rate, d.student_steps, c.optimizer.warmup_steps,
                           c.optimizer.weight_decay)
        # The same initialisation and the same batches for both students.
        state, shardings = fb.train_state(placement, student, opt, c, c.train.seed + 7)
        if mode == "scratch":
            step, constants = make_train_step(student, opt, weights, rate), ()
        else:
            tau = temperature_schedule(d.schedule, d.tau_start, d.tau_end, d.student_steps)
            step = make_distill_train_step(student, teacher_model, opt, tau, d.alpha, weights, rate)
            constants = (teacher_vars,)
        state, loss, seconds = fb.train_steps(placement, step, state, shardings,
                                              fb.batches(c, train_source, tokenizer, 0), d.student_steps,
                                              f"{mode} student", log, batch_size=c.train.batch_size,
                                              constants=constants)
        acc, _ = fb.accuracy(c, c.student_model, state.params, state.router_bias, test_source, tokenizer,
                             placement)
        results[mode] = {"exact_match": acc, "final_loss": loss, "seconds": round(seconds, 1)}
        log(f"{mode} student: {acc:.1%} held-out exact match")

    details = {
        "task": "arithmetic", "eval_examples": count, "teacher_exact_match": teacher_acc,
        "teacher_steps": d.teacher_steps,
        "scratch_exact_match": results["scratch"]["exact_match"],
        "distilled_exact_match": results["distilled"]["exact_match"],
        "teacher_params": count_parameters(c.model)["total"],
        "student_params": count_parameters(c.student_model)["total"],
        "alpha": d.alpha, "schedule": f"{d.schedule} {d.tau_start} -> {d.tau_end}",
        "results": results, "teacher_train_seconds": round(teacher_seconds, 1),
        "total_seconds": round(time.time() - t0, 1),
    }
    log(f"held-out exact match on {count}: teacher {teacher_acc:.1%} ({details['teacher_params']:,} "
        f"params), student from scratch {details['scratch_exact_match']:.1%}, distilled "
        f"{details['distilled_exact_match']:.1%} ({details['student_params']:,} params, "
        f"{d.student_steps} steps each)")
    return Summary(job="distill", metric="held-out exact match of the distilled student",
                   value=results["distilled"]["exact_match"], steps=d.student_steps,
                   seconds=round(sum(r["seconds"] for r in results.values()), 1), examples=count,
                   unit="arithmetic problems", details=details)

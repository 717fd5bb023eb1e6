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

`--config.distill.teacher_checkpoint=DIR` reads the teacher from a `save_model`
directory (e.g. the pretrained model of experiments/lora_shift.py, which is this teacher
trained the same way) instead of training it. `sweep()` varies alpha and the schedule.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time

import jax
import ml_collections

from moe_jax.config import load_config
from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.distill.schedule import temperature_schedule
from moe_jax.distill.step import make_distill_train_step
from moe_jax.models.config import validate_model_config
from moe_jax.models.param_count import count_parameters
from moe_jax.models.transformer import Transformer
from moe_jax.moe.router import BIAS_COLLECTION
from moe_jax.train.checkpoint import restore_trained_state
from moe_jax.train.state import create_train_state
from moe_jax.train.step import make_train_step
from moe_jax.train.losses import LossWeights

_HERE = os.path.dirname(os.path.abspath(__file__))


def _lora_shift():
    """The pretraining, data and evaluation helpers of experiments/lora_shift.py."""
    spec = importlib.util.spec_from_file_location("experiments_lora_shift",
                                                  os.path.join(_HERE, "lora_shift.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    variant = arg or "tiny"
    small = variant == "runlocal"
    if variant not in ("tiny", "runlocal", "arith"):
        raise ValueError(f"variant {variant!r}: expected one of tiny, runlocal, arith")
    lora_shift = _lora_shift()
    c = lora_shift.get_config("tiny" if variant == "arith" else variant)
    c.experiment = "experiments.distill"
    del c["finetune"], c["lora"], c.data["shifted_difficulty"]
    if variant == "arith":  # the README's main job is the teacher: same model, data, batch
        main_job = load_config(lora_shift.PRETRAIN_FILE + ":tiny")
        c.model, c.data = main_job.model, main_job.data
        c.train.batch_size = main_job.train.batch_size
        c.optimizer = main_job.optimizer
        c.eval.max_new_tokens = main_job.eval.max_new_tokens
    c.student_model = c.model.copy_and_resolve_references()
    c.student_model.num_layers, c.student_model.num_dense_layers = (1, 0) if small else (2, 1)
    c.student_model.num_experts, c.student_model.top_k = 4, 2

    c.distill = ml_collections.ConfigDict()
    c.distill.teacher_steps = 6 if small else 400
    c.distill.student_steps = 3 if small else 200
    if variant == "arith":  # the teacher comes from --config.distill.teacher_workdir
        c.distill.teacher_steps = main_job.train.steps
        c.distill.student_steps = 1200
    c.distill.teacher_checkpoint = ""  # a save_model directory; empty: train the teacher
    c.distill.teacher_workdir = ""  # or the workdir of a training run of the teacher's config
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


def _teacher(c, workdir, tokenizer, train_source, helpers, log):
    model = Transformer.from_config(c.model)
    loaded = None
    if c.distill.teacher_workdir:
        state = restore_trained_state(c.distill.teacher_workdir, model, log)
        if state is None:
            raise FileNotFoundError(f"distill.teacher_workdir = {c.distill.teacher_workdir!r}: "
                                    "no checkpoint there")
        log(f"teacher read from {c.distill.teacher_workdir} (step {int(state.step)})")
        return model, state.params, state.router_bias, 0.0
    if c.distill.teacher_checkpoint:
        loaded = helpers.load_model(c.distill.teacher_checkpoint, model, c.data.seq_len)
        if loaded is None:
            raise FileNotFoundError(f"distill.teacher_checkpoint = {c.distill.teacher_checkpoint!r}: "
                                    "expected a directory written by lora_shift.save_model")
        log(f"teacher read from {c.distill.teacher_checkpoint}")
    loaded = loaded or helpers.load_model(os.path.join(workdir, "teacher"), model, c.data.seq_len)
    if loaded is not None:
        return model, loaded[0], loaded[1], 0.0
    opt = helpers._optimizer(c, c.optimizer.learning_rate, c.distill.teacher_steps,
                             c.optimizer.warmup_steps, c.optimizer.weight_decay)
    state = create_train_state(model, opt, jax.random.PRNGKey(c.train.seed), c.data.seq_len)
    step = jax.jit(make_train_step(model, opt, LossWeights.from_config(c.model), c.model.bias_update_rate), donate_argnums=0)
    state, _, seconds = helpers._train(step, state, helpers._batches(c, train_source, tokenizer, 0),
                                       c.distill.teacher_steps, "teacher", log)
    params, bias = jax.device_get(state.params), jax.device_get(state.router_bias)
    helpers.save_model(os.path.join(workdir, "teacher"), c.distill.teacher_steps, params, bias)
    return model, params, bias, seconds


def run(c, workdir, log=print) -> dict:
    os.makedirs(workdir, exist_ok=True)
    helpers = _lora_shift()
    validate_model_config(c.student_model)
    d = c.distill
    if d.student_steps >= d.teacher_steps and not (d.teacher_checkpoint or d.teacher_workdir):
        raise ValueError(f"distill.student_steps = {d.student_steps}: expected fewer than "
                         f"distill.teacher_steps = {d.teacher_steps} (the teacher trains longer)")
    t0 = time.time()
    tokenizer = get_tokenizer(c.data.tokenizer)
    train_source, test_source = helpers._data(c, c.data.difficulty, workdir)
    teacher, t_params, t_bias, teacher_seconds = _teacher(c, workdir, tokenizer, train_source,
                                                          helpers, log)
    teacher_acc, count = helpers._accuracy(c, t_params, t_bias, test_source, tokenizer)
    log(f"teacher: {teacher_acc:.1%} held-out exact match")

    student = Transformer.from_config(c.student_model)
    student_c = c.copy_and_resolve_references()
    student_c.model = c.student_model
    results = {}
    for mode in ("scratch", "distilled"):
        opt = helpers._optimizer(c, c.optimizer.learning_rate, d.student_steps,
                                 c.optimizer.warmup_steps, c.optimizer.weight_decay)
        # The same initialisation and the same batches for both students.
        state = create_train_state(student, opt, jax.random.PRNGKey(c.train.seed + 7), c.data.seq_len)
        if mode == "scratch":
            step = jax.jit(make_train_step(student, opt, LossWeights.from_config(c.student_model),
                                                  c.student_model.bias_update_rate), donate_argnums=0)
        else:
            tau = temperature_schedule(d.schedule, d.tau_start, d.tau_end, d.student_steps)
            distill_step = jax.jit(make_distill_train_step(
                student, teacher, opt, tau, d.alpha, LossWeights.from_config(c.student_model),
                c.student_model.bias_update_rate),
                                   donate_argnums=0)
            teacher_vars = {"params": t_params, BIAS_COLLECTION: t_bias}
            step = lambda s, b, r: distill_step(s, teacher_vars, b, r)  # noqa: E731
        state, loss, seconds = helpers._train(step, state, helpers._batches(c, train_source, tokenizer, 0),
                                              d.student_steps, f"{mode} student", log)
        acc, _ = helpers._accuracy(student_c, state.params, state.router_bias, test_source, tokenizer)
        results[mode] = {"exact_match": acc, "final_loss": loss, "seconds": round(seconds, 1)}
        log(f"{mode} student: {acc:.1%} held-out exact match")

    summary = {
        "task": "arithmetic", "eval_examples": count, "step": d.student_steps,
        "teacher_exact_match": teacher_acc, "teacher_steps": d.teacher_steps,
        "scratch_exact_match": results["scratch"]["exact_match"],
        "distilled_exact_match": results["distilled"]["exact_match"],
        "exact_match": results["distilled"]["exact_match"],
        "teacher_params": count_parameters(c.model)["total"],
        "student_params": count_parameters(c.student_model)["total"],
        "alpha": d.alpha, "schedule": f"{d.schedule} {d.tau_start} -> {d.tau_end}",
        "results": results, "teacher_train_seconds": round(teacher_seconds, 1),
        "train_seconds": round(sum(r["seconds"] for r in results.values()), 1),
        "total_seconds": round(time.time() - t0, 1),
    }
    log(f"held-out exact match on {count}: teacher {teacher_acc:.1%} ({summary['teacher_params']:,} "
        f"params), student from scratch {summary['scratch_exact_match']:.1%}, distilled "
        f"{summary['distilled_exact_match']:.1%} ({summary['student_params']:,} params, "
        f"{d.student_steps} steps each)")
    with open(os.path.join(workdir, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    return summary

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

`arith` starts from the README's main job instead (2-3 operands of up to 3 digits) and
shifts to 4 such operands:

    python -m moe_jax.main --config=experiments/pretrain_arith.py:tiny --workdir=runs/arith
    python -m moe_jax.main --config=experiments/lora_shift.py:arith --workdir=runs/lora_arith \
        --config.finetune.base_workdir=runs/arith

`sweep()` varies the LoRA rank and targets. `runlocal` is a seconds-long smoke variant.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections

from moe_jax.config import load_config
from moe_jax.data.pipeline import train_dataset
from moe_jax.data.tfds_builders import load_task_split
from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.lora.adapters import default_lora_config, init_adapters, merge, trainable_report, tree_bytes
from moe_jax.lora.qlora import prepare_base
from moe_jax.lora.step import create_lora_state, make_lora_train_step
from moe_jax.models.transformer import Transformer
from moe_jax.train.evaluate import exact_match
from moe_jax.train.optimizer import make_optimizer
from moe_jax.train.checkpoint import Checkpointer, restore_trained_state
from moe_jax.train.state import create_train_state, init_variables
from moe_jax.train.step import make_train_step
from moe_jax.train.losses import LossWeights

PRETRAIN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain_arith.py")


def get_config(arg=None):
    variant = arg or "tiny"
    if variant not in ("tiny", "runlocal", "arith"):
        raise ValueError(f"variant {variant!r}: expected one of tiny, runlocal, arith")
    if variant == "arith":
        return _arith_config()
    c = load_config(PRETRAIN_FILE + ":tiny")
    c.experiment = "experiments.lora_shift"
    small = variant == "runlocal"
    if small:  # narrow and shallow: the smoke test is about the pipeline, not accuracy
        c.model.update(d_model=32, num_layers=2, num_heads=2, dense_ffn=64, kv_lora_rank=16,
                       qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, num_experts=4,
                       expert_ffn=32)
    c.data.difficulty = ml_collections.ConfigDict({"min_operands": 2, "max_operands": 3, "max_digits": 2})
    c.data.shifted_difficulty = ml_collections.ConfigDict(
        {"min_operands": 4, "max_operands": 4, "max_digits": 2})
    c.data.num_train = 2_000 if small else 20_000
    c.data.num_test = 100 if small else 500
    c.data.seq_len = 128
    c.train.steps = 4 if small else 400  # pretraining
    c.train.batch_size = 8 if small else 32
    c.train.log_every = 2 if small else 100
    c.optimizer.total_steps = c.train.steps
    c.optimizer.warmup_steps = 2 if small else 40

    c.finetune = ml_collections.ConfigDict()
    c.finetune.steps = 3 if small else 150
    c.finetune.full_learning_rate = 1e-3
    c.finetune.lora_learning_rate = 5e-3  # adapters start at zero and need a larger step
    c.finetune.warmup_steps = 1 if small else 20
    c.finetune.base_workdir = ""  # a training run of c.model to start from; empty: pretrain here
    c.lora = default_lora_config()
    c.lora.rank, c.lora.alpha = 8, 16.0

    c.eval.num_examples = 8 if small else 500
    c.eval.batch_size = 8 if small else 250
    c.eval.max_new_tokens = 16 if small else 48
    return c


def _arith_config():
    """The README's main job (pretrain_arith `tiny`: 2-3 operands of up to 3 digits) as the
    base, read from --config.finetune.base_workdir; the shift is to 4 such operands."""
    c = get_config("tiny")
    main_job = load_config(PRETRAIN_FILE + ":tiny")
    c.model, c.optimizer = main_job.model, main_job.optimizer
    c.data.difficulty = main_job.data.difficulty
    c.data.shifted_difficulty = ml_collections.ConfigDict(
        {"min_operands": 4, "max_operands": 4, "max_digits": 3})
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


def _data(c, difficulty, workdir):
    d = c.data
    data_dir = d.data_dir or os.path.join(workdir, "data")
    args = dict(num_train=d.num_train, num_test=d.num_test, seed=d.seed, **difficulty)
    return (load_task_split(d.task, "train", data_dir, **args),
            load_task_split(d.task, "test", data_dir, **args))


def _batches(c, source, tokenizer, seed):
    return iter(train_dataset(source, tokenizer, global_batch_size=c.train.batch_size,
                              seq_len=c.data.seq_len, seed=seed, packing=c.data.packing))


def _optimizer(c, learning_rate, steps, warmup, weight_decay):
    o = c.optimizer.copy_and_resolve_references()
    o.learning_rate, o.total_steps, o.warmup_steps, o.weight_decay = learning_rate, steps, warmup, weight_decay
    return make_optimizer(o)


def _train(step, state, batches, steps, name, log):
    start, loss = time.time(), float("nan")
    for i in range(steps):
        state, metrics = step(state, next(batches), jax.random.PRNGKey(i))
        if (i + 1) % max(steps // 4, 1) == 0:
            loss = float(metrics["loss"])
            log(f"  {name} step {i + 1}/{steps}: loss {loss:.4f}")
    return state, loss, time.time() - start


def save_model(directory, step, params, router_bias):
    """Params + router biases as an orbax checkpoint (experiments/distill.py can read it
    back as its teacher with `load_model`)."""
    checkpointer = Checkpointer(directory, keep=1, async_save=False, log=lambda *_: None)
    checkpointer.save(step, {"params": params, "router_bias": router_bias}, {}, {})
    checkpointer.close()


def load_model(directory, model, seq_len):
    """-> (params, router_bias) saved by `save_model`, or None when there is none."""
    if not os.path.isdir(directory):
        return None
    params, router_bias, _ = init_variables(model, jax.random.PRNGKey(0), seq_len)
    checkpointer = Checkpointer(directory, keep=1, async_save=False, log=lambda *_: None)
    restored = checkpointer.restore_latest({"params": params, "router_bias": router_bias}, quarantine=False)
    checkpointer.close()
    return None if restored is None else (restored[0]["params"], restored[0]["router_bias"])


def _accuracy(c, params, router_bias, source, tokenizer):
    acc, count, _ = exact_match(c.model, params, router_bias, source, tokenizer, task=c.data.task,
                                num_examples=c.eval.num_examples, batch_size=c.eval.batch_size,
                                max_new_tokens=c.eval.max_new_tokens)
    return acc, count


def run(c, workdir, log=print) -> dict:
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    tokenizer = get_tokenizer(c.data.tokenizer)
    model = Transformer.from_config(c.model)
    pre_train, pre_test = _data(c, c.data.difficulty, workdir)
    shift_train, shift_test = _data(c, c.data.shifted_difficulty, workdir)

    # 1. Pretraining on 2-3 operands, or reading a run that did it.
    if c.finetune.base_workdir:
        state = restore_trained_state(c.finetune.base_workdir, model, log)
        if state is None:
            raise FileNotFoundError(f"finetune.base_workdir = {c.finetune.base_workdir!r}: no checkpoint there")
        pre_seconds = 0.0
        log(f"base model read from {c.finetune.base_workdir} (step {int(state.step)})")
    else:
        opt = _optimizer(c, c.optimizer.learning_rate, c.train.steps, c.optimizer.warmup_steps,
                         c.optimizer.weight_decay)
        state = create_train_state(model, opt, jax.random.PRNGKey(c.train.seed), c.data.seq_len)
        step = jax.jit(make_train_step(model, opt, LossWeights.from_config(c.model), c.model.bias_update_rate), donate_argnums=0)
        state, _, pre_seconds = _train(step, state, _batches(c, pre_train, tokenizer, 0), c.train.steps,
                                       "pretrain", log)
    base, router_bias = jax.device_get(state.params), jax.device_get(state.router_bias)
    if not c.finetune.base_workdir:
        save_model(os.path.join(workdir, "pretrained"), c.train.steps, base, router_bias)
    pre_acc, _ = _accuracy(c, base, router_bias, pre_test, tokenizer)
    before, count = _accuracy(c, base, router_bias, shift_test, tokenizer)
    log(f"pretrained: {pre_acc:.1%} on 2-3 operands, {before:.1%} on 4 operands")

    f = c.finetune
    # 2a. Full fine-tuning: every parameter, AdamW moments for every parameter.
    opt = _optimizer(c, f.full_learning_rate, f.steps, f.warmup_steps, c.optimizer.weight_decay)
    full = create_train_state(model, opt, jax.random.PRNGKey(0), c.data.seq_len)
    full = full.replace(params=base, opt_state=opt.init(base), router_bias=router_bias)
    full_opt_bytes = tree_bytes(full.opt_state)
    step = jax.jit(make_train_step(model, opt, LossWeights.from_config(c.model), 0.0), donate_argnums=0)
    full, full_loss, full_seconds = _train(step, full, _batches(c, shift_train, tokenizer, 1),
                                           f.steps, "full fine-tune", log)
    full_acc, _ = _accuracy(c, full.params, full.router_bias, shift_test, tokenizer)

    # 2b. LoRA: the same data order, steps and batch; only the adapters train.
    frozen = prepare_base(base, c.lora)
    adapters = init_adapters(jax.random.PRNGKey(1), base, c.lora)
    opt = _optimizer(c, f.lora_learning_rate, f.steps, f.warmup_steps, 0.0)
    lora = create_lora_state(adapters, opt, router_bias)
    report = trainable_report(frozen, adapters, lora.opt_state)
    lora_step = jax.jit(make_lora_train_step(model, opt, c.lora, LossWeights.from_config(c.model)), donate_argnums=0)
    lora, lora_loss, lora_seconds = _train(lambda s, b, r: lora_step(s, frozen, b, r), lora,
                                           _batches(c, shift_train, tokenizer, 1), f.steps,
                                           "LoRA fine-tune", log)
    lora_acc, _ = _accuracy(c, merge(frozen, lora.params, c.lora), router_bias, shift_test, tokenizer)

    summary = {
        "task": "arithmetic 4 operands", "eval_examples": count, "step": c.train.steps + f.steps,
        "pretrain_exact_match": pre_acc, "shifted_before_finetune": before,
        "full_exact_match": full_acc, "lora_exact_match": lora_acc, "exact_match": lora_acc,
        "gap_points": round(100 * (full_acc - lora_acc), 1),
        "full_final_loss": full_loss, "lora_final_loss": lora_loss,
        "trainable_fraction": report["trainable_fraction"], "adapter_params": report["adapter_params"],
        "base_params": report["base_params"], "lora_optimizer_bytes": report["optimizer_bytes"],
        "full_optimizer_bytes": full_opt_bytes, "lora_rank": c.lora.rank,
        "seconds": {"pretrain": round(pre_seconds, 1), "full": round(full_seconds, 1),
                    "lora": round(lora_seconds, 1), "total": round(time.time() - t0, 1)},
        "train_seconds": round(pre_seconds + full_seconds + lora_seconds, 1),
    }
    log(f"4-operand held-out exact match on {count}: full fine-tune {full_acc:.1%}, LoRA rank "
        f"{c.lora.rank} {lora_acc:.1%} (gap {summary['gap_points']} points); adapters "
        f"{report['adapter_params']:,} of {report['base_params']:,} params "
        f"({report['trainable_fraction']:.2%}); optimizer state {report['optimizer_bytes'] / 2**20:.2f} MiB "
        f"vs {full_opt_bytes / 2**20:.2f} MiB for full fine-tuning")
    with open(os.path.join(workdir, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    return summary

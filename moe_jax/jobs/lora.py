"""The `lora` job: LoRA against full fine-tuning on a task shift, from the same base.

1. The base: `finetune.base_workdir` (a training workdir or model directory), or a model
   pretrained here for train.steps on data.difficulty (saved as <workdir>/pretrained, a
   model directory, and reused by a rerun).
2. The shift: data.shifted_difficulty. From the same base weights, (a) every parameter
   and (b) rank-r adapters on `lora.targets` (the base frozen) are fine-tuned with the
   same data order, steps and batch.
3. Held-out exact match of both on the shifted task, the adapters' share of the
   parameters, and both optimizer states' bytes.
"""

from __future__ import annotations

import os
import time

import jax

from moe_jax.data.splits import load_data
from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.jobs import fixed_budget as fb
from moe_jax.jobs.pretrain import validate as validate_training
from moe_jax.jobs.summary import Summary
from moe_jax.lora.adapters import init_adapters, merge, trainable_report, tree_bytes, validate_lora_config
from moe_jax.lora.qlora import prepare_base
from moe_jax.lora.step import create_lora_state, make_lora_train_step
from moe_jax.models.config import ConfigError
from moe_jax.models.transformer import Transformer
from moe_jax.train.losses import LossWeights
from moe_jax.train.placement import Placement
from moe_jax.train.step import make_train_step


def validate(config) -> None:
    validate_training(config)
    for section in ("finetune", "lora"):
        if section not in config:
            raise ConfigError(section, None, f"a `{section}` section (see experiments/lora_shift.py)")
    if "shifted_difficulty" not in config.data:
        raise ConfigError("data.shifted_difficulty", None, "the difficulty fine-tuning shifts to")
    validate_lora_config(config.lora)
    if config.finetune.steps < 1:
        raise ConfigError("finetune.steps", config.finetune.steps, "a positive integer")


def _base(c, workdir, tokenizer, train_source, log, placement):
    """(params, router_bias, seconds spent pretraining)."""
    return fb.start_model(c, workdir, read_from=c.finetune.base_workdir, field="finetune.base_workdir",
                          name="pretrained", steps=c.train.steps, train_source=train_source,
                          tokenizer=tokenizer, log=log, placement=placement)


def run(c, workdir: str, *, experiment=None, log=print) -> Summary:
    del experiment
    validate(c)
    os.makedirs(workdir, exist_ok=True)
    placement = Placement.from_config(c)
    placement.check_model(c.model)
    log(placement.describe())
    t0 = time.time()
    tokenizer = get_tokenizer(c.data.tokenizer)
    model = Transformer.from_config(c.model)
    weights = LossWeights.from_config(c.model)
    pre_train, pre_test = load_data(c, workdir)
    shift_train, shift_test = load_data(c, workdir, difficulty=c.data.shifted_difficulty)

    base, router_bias, pre_seconds = _base(c, workdir, tokenizer, pre_train, log, placement)
    pre_acc, _ = fb.accuracy(c, c.model, base, router_bias, pre_test, tokenizer, placement)
    before, count = fb.accuracy(c, c.model, base, router_bias, shift_test, tokenizer, placement)
    log(f"pretrained: {pre_acc:.1%} on the pretraining task, {before:.1%} on the shifted one")

    f = c.finetune
    # Full fine-tuning: every parameter, AdamW moments for every parameter.
    opt = fb.optimizer(c, f.full_learning_rate, f.steps, f.warmup_steps, c.optimizer.weight_decay)
    full, shardings = fb.train_state(placement, model, opt, c, 0, base, router_bias)
    full_opt_bytes = tree_bytes(full.opt_state)
    full, full_loss, full_seconds = fb.train_steps(
        placement, make_train_step(model, opt, weights, 0.0), full, shardings,
        fb.batches(c, shift_train, tokenizer, 1), f.steps, "full fine-tune", log, batch_size=c.train.batch_size)
    full_acc, _ = fb.accuracy(c, c.model, full.params, full.router_bias, shift_test, tokenizer, placement)

    # LoRA: the same data order, steps and batch; only the adapters train.
    frozen = prepare_base(base, c.lora)
    adapters = init_adapters(jax.random.PRNGKey(1), base, c.lora)
    opt = fb.optimizer(c, f.lora_learning_rate, f.steps, f.warmup_steps, 0.0)
    lora = create_lora_state(adapters, opt, router_bias)
    report = trainable_report(frozen, adapters, lora.opt_state)
    # The frozen base on the mesh like the params it replaces (NF4 blocks replicated);
    # the adapters and their moments, a few MB, replicated.
    frozen = placement.put(frozen, placement.param_shardings(model, frozen))
    lora_shardings = jax.tree.map(lambda _: placement.replicated(), lora)
    lora = placement.put(lora, lora_shardings)
    lora, lora_loss, lora_seconds = fb.train_steps(
        placement, make_lora_train_step(model, opt, c.lora, weights), lora, lora_shardings,
        fb.batches(c, shift_train, tokenizer, 1), f.steps, "LoRA fine-tune", log,
        batch_size=c.train.batch_size, constants=(frozen,))
    merged = placement.run(jax.jit(lambda b, a: merge(b, a, c.lora)), frozen, lora.params)
    lora_acc, _ = fb.accuracy(c, c.model, merged, router_bias, shift_test, tokenizer, placement)

    details = {
        "task": "arithmetic, shifted difficulty", "eval_examples": count,
        "pretrain_exact_match": pre_acc, "shifted_before_finetune": before,
        "full_exact_match": full_acc, "lora_exact_match": lora_acc,
        "gap_points": round(100 * (full_acc - lora_acc), 1),
        "full_final_loss": full_loss, "lora_final_loss": lora_loss,
        "trainable_fraction": report["trainable_fraction"], "adapter_params": report["adapter_params"],
        "base_params": report["base_params"], "lora_optimizer_bytes": report["optimizer_bytes"],
        "full_optimizer_bytes": full_opt_bytes, "lora_rank": c.lora.rank,
        "seconds": {"pretrain": round(pre_seconds, 1), "full": round(full_seconds, 1),
                    "lora": round(lora_seconds, 1), "total": round(time.time() - t0, 1)},
    }
    log(f"shifted held-out exact match on {count}: full fine-tune {full_acc:.1%}, LoRA rank "
        f"{c.lora.rank} {lora_acc:.1%} (gap {details['gap_points']} points); adapters "
        f"{report['adapter_params']:,} of {report['base_params']:,} params "
        f"({report['trainable_fraction']:.2%}); optimizer state {report['optimizer_bytes'] / 2**20:.2f} MiB "
        f"vs {full_opt_bytes / 2**20:.2f} MiB for full fine-tuning")
    return Summary(job="lora", metric="held-out exact match after LoRA", value=lora_acc,
                   steps=c.train.steps + f.steps, seconds=round(pre_seconds + full_seconds + lora_seconds, 1),
                   examples=count, unit="shifted problems", details=details)

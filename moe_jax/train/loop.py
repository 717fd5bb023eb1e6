"""The pretraining (and SFT) job's loop: data, the sharded jitted step, eval, checkpoints.

`train_and_evaluate(config, workdir)` is what `python -m moe_jax.main` runs for the
`pretrain` and `sft` jobs. It runs on the mesh of `config.mesh` (default: every visible
device; one device is a plain run), through the one trainer core (moe_jax.train.trainer):
each process reads its own shard of the grain pipeline, the state is created directly in
its shardings, and the held-out evaluation samples on the mesh too. Rerunning the same
command resumes from the newest good checkpoint with the same parameters, optimizer
state, router biases, data position and per-step rng, so the resumed run computes
exactly what an uninterrupted one would have, on this mesh or another. A rerun with a
config that cannot continue the run stops before anything is read (run_config.py).
"""

from __future__ import annotations

import json
import os
import time

import grain
import jax
import ml_collections

from moe_jax.analysis.exact_match import exact_match
from moe_jax.config import validate
from moe_jax.data.pipeline import train_dataset
from moe_jax.data.prefetch import Prefetch
from moe_jax.data.splits import load_data
from moe_jax.data.tasks import get_task
from moe_jax.data.tokenizer import get_tokenizer
from moe_jax.models.config import ConfigError
from moe_jax.models.transformer import Transformer
from moe_jax.train.dp_step import dp_optimizer, make_dp_train_step
from moe_jax.train.losses import LossWeights
from moe_jax.train.optimizer import make_optimizer, validate_optimizer_config
from moe_jax.train.placement import Placement
from moe_jax.train.privacy import check_dp_config, privacy_settings
from moe_jax.train.run_config import check_and_record
from moe_jax.train.state import create_train_state
from moe_jax.train.step import make_train_step
from moe_jax.train.trainer import LoopSettings, NonFiniteLossError, Trainer, check_finite  # noqa: F401

def validate_training_config(config: ml_collections.ConfigDict, process_count: int = 1):
    """Check every section before anything touches a device (so it runs before
    jax.distributed is initialised; the loop re-checks with the real process count)."""
    validate(config)
    for section in ("data", "train", "optimizer", "eval"):
        if section not in config:
            raise ConfigError(section, None, f"a `{section}` section (see experiments/pretrain_arith.py)")
    t, d = config.train, config.data
    for field in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
        if not isinstance(t[field], int) or t[field] <= 0:
            raise ConfigError(f"train.{field}", t[field], "a positive integer")
    if t.batch_size % process_count:
        raise ConfigError("train.batch_size", t.batch_size,
                          f"a multiple of the process count {process_count}")
    if d.seq_len > config.model.max_seq_len:
        raise ConfigError("data.seq_len", d.seq_len, f"at most model.max_seq_len = {config.model.max_seq_len}")
    threads = d.get("read_threads")
    if threads is not None and (not isinstance(threads, int) or threads < 0):
        raise ConfigError("data.read_threads", threads, "a non-negative integer, or None for grain's default")
    curriculum = d.get("curriculum", 0.0)
    if isinstance(curriculum, bool) or not isinstance(curriculum, (int, float)) or not 0 <= curriculum <= 1:
        raise ConfigError("data.curriculum", curriculum, "a fraction of the first epoch in [0, 1]")
    get_task(d.task)  # unknown task names fail here, naming the choices
    validate_optimizer_config(config.optimizer)
    check_dp_config(config)


def read_options(data_config) -> grain.ReadOptions | None:
    """data.read_threads: grain's reader threads; None (or absent) keeps grain's default.
    Prefetch already overlaps reading with the step, so on a few cores 0 threads (read
    on the prefetch thread) costs the step the least: 19 ms per 16x128 batch against 34
    ms with grain's 16 threads, on 2 cores."""
    threads = data_config.get("read_threads")
    return None if threads is None else grain.ReadOptions(num_threads=threads)


def optimizer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """config.optimizer, resolved, with total_steps <= 0 meaning "follow train.steps"."""
    opt_config = config.optimizer.copy_and_resolve_references()
    if opt_config.total_steps <= 0:
        opt_config.total_steps = config.train.steps
    return opt_config


def check_batch_on_mesh(config, placement: Placement) -> None:
    """The global batch must split evenly over the batch axes of the mesh."""
    shards = placement.batch_shards
    if config.train.batch_size % shards:
        raise ConfigError("train.batch_size", config.train.batch_size,
                          f"a multiple of {shards}, the product of the mesh's batch axes "
                          f"({placement.describe()})")


def log_placement(placement: Placement, state, log) -> None:
    """What a run on many devices should say first: where everything lives."""
    log(placement.describe_params(state.params))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, log=print,
                       make_step=None) -> dict:
    """Train, checkpoint and evaluate; returns the final summary (also in summary.json).
    make_step(model, optimizer, config) -> train_step replaces the default step. With
    `dp.enabled` the step is DP-SGD's (moe_jax.train.dp_step) and the metrics carry
    dp/epsilon, the budget spent so far (moe_jax.train.privacy)."""
    validate_training_config(config, jax.process_count())
    privacy = privacy_settings(config)
    if privacy is not None and make_step is not None:
        raise ConfigError("dp.enabled", True, "False with an experiment's own make_train_step "
                          "(DP-SGD brings its own step)")
    check_and_record(config, workdir, log)  # before any data, compile or file is touched
    placement = Placement.from_config(config)
    check_batch_on_mesh(config, placement)
    placement.check_model(config.model)
    t, m = config.train, config.model
    tokenizer = get_tokenizer(config.data.tokenizer)
    if tokenizer.vocab_size > m.vocab_size:
        raise ConfigError("model.vocab_size", m.vocab_size,
                          f"at least the tokenizer's vocabulary size {tokenizer.vocab_size}")
    began = time.time()
    train_source, test_source = load_data(config, workdir)
    log(f"data: {config.data.task}, {len(train_source):,} training and {len(test_source):,} held-out "
        f"problems ({time.time() - began:.0f}s)")
    # Each process reads its own rows; together they form the global batch.
    dataset = train_dataset(train_source, tokenizer, global_batch_size=t.batch_size,
                            seq_len=config.data.seq_len, seed=t.seed, packing=config.data.packing,
                            process_index=jax.process_index(), process_count=jax.process_count(),
                            read_options=read_options(config.data),
                            curriculum=config.data.get("curriculum", 0.0))
    data_iter = Prefetch(iter(dataset), depth=2)

    model = Transformer.from_config(m)
    optimizer = make_optimizer(optimizer_config(config))
    if privacy is not None:
        optimizer = dp_optimizer(optimizer, privacy, seed=t.seed + 2)
        log(privacy.describe())
    init = lambda rng: create_train_state(model, optimizer, rng, config.data.seq_len)  # noqa: E731
    state, shardings = placement.create_state(model, init, jax.random.PRNGKey(t.seed), config.data.seq_len)
    log_placement(placement, state, log)
    trainer = Trainer(workdir, LoopSettings.from_config(config, t.batch_size * config.data.seq_len),
                      placement, log=log)
    try:
        state = trainer.restore(state, data_iter)
        if make_step is not None:
            step = make_step(model, optimizer, config)
        elif privacy is not None:
            step = make_dp_train_step(model, optimizer, LossWeights.from_config(m), privacy.clip_norm)
        else:
            step = make_train_step(model, optimizer, LossWeights.from_config(m), m.bias_update_rate)
        batch_sharding = placement.batch_sharding(2, t.batch_size)
        step_fn = placement.jit(step, (shardings, batch_sharding, None), (shardings, None), donate_argnums=0)
        base_rng = jax.random.PRNGKey(t.seed + 1)

        def update(state, batch, i):
            state, metrics = step_fn(state, batch, jax.random.fold_in(base_rng, i))
            done = i + 1
            if privacy is not None and (done % t.log_every == 0 or done == t.steps):
                metrics = dict(metrics, **{"dp/epsilon": privacy.epsilon(done)})
            return state, metrics

        def evaluate(num_examples, state):
            return exact_match(m, state.params, state.router_bias, test_source, tokenizer,
                               task=config.data.task, num_examples=num_examples,
                               batch_size=config.eval.batch_size,
                               max_new_tokens=config.eval.max_new_tokens, show=config.eval.show,
                               placement=placement)

        def periodic_eval(done, state):
            accuracy, count, _ = evaluate(config.eval.num_examples, state)
            return {"exact_match": accuracy, "examples": count}

        log(f"training: steps {int(state.step)} to {t.steps} of {t.batch_size} x {config.data.seq_len} "
            f"tokens (the first step compiles)")
        state = trainer.run(
            state, data_iter=data_iter,
            next_batch=lambda i, s: placement.shard_batch(next(data_iter), process_local=True),
            update=update, evaluate=periodic_eval, extra={"seed": t.seed})
    finally:
        data_iter.close()

    log(f"evaluating: greedy answers to {config.eval.final_num_examples} held-out problems")
    accuracy, count, samples = evaluate(config.eval.final_num_examples, state)
    for prompt, response, ok in samples:
        log(f"  {prompt}{response}   {'ok' if ok else 'WRONG'}")
    summary = {"step": int(state.step), "exact_match": accuracy, "eval_examples": count,
               "final_loss": trainer.last_scalars.get("loss"), "train_seconds": round(trainer.seconds, 1),
               "task": config.data.task, "mesh": placement.shape}
    if privacy is not None:
        summary["dp"] = {"epsilon": privacy.epsilon(int(state.step)), "delta": privacy.delta,
                         "noise_multiplier": privacy.noise_multiplier, "clip_norm": privacy.clip_norm,
                         "sampling_rate": privacy.sampling_rate, "accountant": privacy.accountant}
    trainer.write(int(state.step), {"eval/exact_match": accuracy, "eval/examples": count})
    trainer.close()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary

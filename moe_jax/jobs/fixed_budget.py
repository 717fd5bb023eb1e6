"""Short training runs of a fixed number of steps, shared by the distill and lora jobs.

Each compares models trained on the same batches for the same steps (a student from
scratch vs distilled, full fine-tuning vs LoRA), so the runs here keep no checkpoints
and resume nothing: a comparison is rerun whole. They run through the one trainer core
on the job's mesh (config.mesh), with every process reading the whole global batch. Weights worth keeping (a pretrained
base, a trained teacher) are saved as model directories and read with the one loader.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from moe_jax.analysis.exact_match import exact_match
from moe_jax.data.pipeline import train_dataset
from moe_jax.interop.checkpoint import MODEL_CONFIG_FILE, save_converted
from moe_jax.models.transformer import Transformer
from moe_jax.train.loader import load_model
from moe_jax.train.losses import LossWeights
from moe_jax.train.optimizer import make_optimizer
from moe_jax.train.placement import replicate_to_host
from moe_jax.train.state import TrainState, create_train_state
from moe_jax.train.step import make_train_step
from moe_jax.train.trainer import LoopSettings, Trainer


def batches(config, source, tokenizer, seed: int):
    """An endless iterator of packed training batches of config.train.batch_size."""
    return iter(train_dataset(source, tokenizer, global_batch_size=config.train.batch_size,
                              seq_len=config.data.seq_len, seed=seed, packing=config.data.packing))


def optimizer(config, learning_rate: float, steps: int, warmup: int, weight_decay: float):
    """config.optimizer with this run's rate, schedule length, warmup and decay."""
    o = config.optimizer.copy_and_resolve_references()
    o.learning_rate, o.total_steps, o.warmup_steps, o.weight_decay = learning_rate, steps, warmup, weight_decay
    return make_optimizer(o)


def train_state(placement, model, optimizer, config, seed: int, params=None, router_bias=None):
    """-> (TrainState on the mesh, its shardings): a fresh init from `seed`, or the given
    host weights with a fresh optimizer state."""
    init = lambda rng: create_train_state(model, optimizer, rng, config.data.seq_len)  # noqa: E731
    if params is None:
        return placement.create_state(model, init, jax.random.PRNGKey(seed), config.data.seq_len)
    _, shardings = placement.state_shardings(model, init, config.data.seq_len)
    params = placement.put(params, shardings.params)
    opt_state = placement.run(jax.jit(optimizer.init, out_shardings=shardings.opt_state), params)
    return TrainState(step=placement.put(np.int32(0), shardings.step), params=params, opt_state=opt_state,
                      router_bias=placement.put(router_bias, shardings.router_bias)), shardings


def train_steps(placement, step, state, shardings, data, steps: int, name: str, log, *, batch_size: int,
                constants=()):
    """`steps` calls of step(state, *constants, batch, rng) -> (state, metrics), jitted on
    the mesh through the trainer core, logging the loss four times. constants: arrays the
    step reads and never returns (a frozen base, a teacher), already on the mesh.
    -> (state, last logged loss, seconds)."""
    constant_shardings = tuple(jax.tree.map(lambda x: x.sharding, c) for c in constants)
    jitted = placement.jit(step, (shardings, *constant_shardings, placement.batch_sharding(2, batch_size), None),
                           (shardings, None), donate_argnums=0)
    logged = [float("nan")]

    def on_report(done, scalars):
        if done % max(steps // 4, 1) == 0:
            logged[0] = scalars["loss"]
            log(f"  {name} step {done}/{steps}: loss {scalars['loss']:.4f}")

    trainer = Trainer(None, LoopSettings(steps=steps, log_every=steps, progress_bar=False), placement,
                      log=log, name=f"{name} ")
    state = trainer.run(state, start_step=0,
                        next_batch=lambda i, s: placement.shard_batch(next(data), process_local=False),
                        update=lambda s, batch, i: jitted(s, *constants, batch, jax.random.PRNGKey(i)),
                        on_report=on_report)
    return state, logged[0], trainer.seconds


def accuracy(config, model_config, params, router_bias, source, tokenizer, placement=None):
    """(held-out exact match, number of problems) with config.eval's settings."""
    acc, count, _ = exact_match(model_config, params, router_bias, source, tokenizer,
                                task=config.data.task, num_examples=config.eval.num_examples,
                                batch_size=config.eval.batch_size,
                                max_new_tokens=config.eval.max_new_tokens, placement=placement)
    return acc, count


def start_model(config, workdir: str, *, read_from: str, field: str, name: str, steps: int,
                train_source, tokenizer, log, placement):
    """(params, router_bias, seconds spent training) of config.model to start from:
    `read_from` (a training workdir or model directory; `field` names it in errors), else
    <workdir>/<name> saved by an earlier run, else trained here for `steps` steps on
    `train_source` and saved there as a model directory."""
    if read_from:
        try:
            loaded = load_model(read_from, config.model, log=log)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{field} = {read_from!r}: {e}") from e
        log(f"{name} read from {read_from} (step {loaded.step})")
        return loaded.params, loaded.router_bias, 0.0
    directory = os.path.join(workdir, name)
    if os.path.exists(os.path.join(directory, MODEL_CONFIG_FILE)):
        saved = load_model(directory, log=log)
        return saved.params, saved.router_bias, 0.0
    m = config.model
    model = Transformer.from_config(m)
    opt = optimizer(config, config.optimizer.learning_rate, steps, config.optimizer.warmup_steps,
                    config.optimizer.weight_decay)
    state, shardings = train_state(placement, model, opt, config, config.train.seed)
    step = make_train_step(model, opt, LossWeights.from_config(m), m.bias_update_rate)
    state, _, seconds = train_steps(placement, step, state, shardings,
                                    batches(config, train_source, tokenizer, 0), steps, name, log,
                                    batch_size=config.train.batch_size)
    host = replicate_to_host({"params": state.params, "router_bias": state.router_bias})
    params, router_bias = host["params"], host["router_bias"]
    save_converted(directory, params, router_bias, m, overwrite=True)
    return params, router_bias, seconds

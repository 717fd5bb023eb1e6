"""Supervised fine-tuning of given weights on in-memory records (SPCT's SFT phases).

Cold start, rejective fine-tuning and the meta RM are each a short SFT run that starts
from the previous phase's weights rather than from scratch, on a list of
{"prompt", "solution"} records built in memory; the pretraining loop
(moe_jax.train.loop) always starts from a fresh init and reads TFDS splits, so the
phases use this smaller loop around the same pipeline and jitted train step.
Phases are saved whole by the caller (pipeline.py), so this loop keeps no checkpoints.
"""

from __future__ import annotations

import grain
import jax
import numpy as np

from moe_jax.data.pipeline import train_dataset
from moe_jax.models.transformer import Transformer
from moe_jax.train.optimizer import make_optimizer
from moe_jax.train.state import TrainState, init_variables
from moe_jax.train.step import make_train_step
from moe_jax.train.losses import LossWeights


def init_params(model_config, seed: int, seq_len: int):
    """Fresh (params, router_bias) for a model trained from scratch."""
    params, router_bias, _ = init_variables(Transformer.from_config(model_config), jax.random.PRNGKey(seed),
                                            seq_len)
    return params, router_bias


def finetune(model_config, params, router_bias, records, tokenizer, *, steps: int,
             batch_size: int, seq_len: int, optimizer_config, seed: int = 0, log=None):
    """Train on `records` for `steps` steps from (params, router_bias).

    -> (params, router_bias, losses float [steps]). optimizer_config is a
    moe_jax.train.optimizer config; total_steps <= 0 follows `steps`.
    """
    if not records:
        raise ValueError("records: expected at least one training record, got none")
    if steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps}")
    opt_config = optimizer_config.copy_and_resolve_references()
    if opt_config.total_steps <= 0:
        opt_config.total_steps = steps
    optimizer = make_optimizer(opt_config)
    model = Transformer.from_config(model_config)
    # Copies: the step donates its state, and callers keep the weights they passed in.
    params = jax.tree.map(jax.numpy.array, params)
    router_bias = jax.tree.map(jax.numpy.array, router_bias)
    state = TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                       opt_state=optimizer.init(params), router_bias=router_bias)
    # One reader thread: on a small shared CPU grain's default 16 threads only contend.
    batches = iter(train_dataset(records, tokenizer, global_batch_size=batch_size,
                                 seq_len=seq_len, seed=seed,
                                 read_options=grain.ReadOptions(num_threads=0)))
    step_fn = jax.jit(make_train_step(model, optimizer, LossWeights.from_config(model_config),
                                      model_config.bias_update_rate), donate_argnums=0)
    losses = []
    for step in range(steps):
        state, metrics = step_fn(state, next(batches), None)
        losses.append(float(metrics["loss"]))
        if not np.isfinite(losses[-1]):
            raise FloatingPointError(f"fine-tuning step {step + 1}: loss {losses[-1]}; lower the "
                                     f"learning rate")
        if log and ((step + 1) % max(steps // 5, 1) == 0 or step + 1 == steps):
            log(f"  step {step + 1}/{steps}: loss {np.mean(losses[-10:]):.3f}")
    return state.params, state.router_bias, np.asarray(losses, np.float32)

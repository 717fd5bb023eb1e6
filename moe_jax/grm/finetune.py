"""Supervised fine-tuning of given weights on in-memory records (SPCT's SFT phases).

Cold start, rejective fine-tuning and the meta RM are each a short SFT run that starts
from the previous phase's weights rather than from scratch, on a list of
{"prompt", "solution"} records built in memory, through the one trainer core
(moe_jax.train.trainer) on the pipeline's mesh. Phases are saved whole by the caller
(pipeline.py), so these runs keep no checkpoints.
"""

from __future__ import annotations

import grain
import jax
import numpy as np

from moe_jax.data.pipeline import train_dataset
from moe_jax.models.config import ConfigError
from moe_jax.models.transformer import Transformer
from moe_jax.train.optimizer import make_optimizer
from moe_jax.train.placement import Placement, replicate_to_host
from moe_jax.train.state import TrainState, create_train_state, init_variables
from moe_jax.train.step import make_train_step
from moe_jax.train.trainer import LoopSettings, Trainer
from moe_jax.train.losses import LossWeights


def init_params(model_config, seed: int, seq_len: int):
    """Fresh (params, router_bias) for a model trained from scratch."""
    params, router_bias, _ = init_variables(Transformer.from_config(model_config), jax.random.PRNGKey(seed),
                                            seq_len)
    return params, router_bias


def finetune(model_config, params, router_bias, records, tokenizer, *, steps: int,
             batch_size: int, seq_len: int, optimizer_config, seed: int = 0, log=None,
             placement: Placement | None = None):
    """Train on `records` for `steps` steps from (params, router_bias), on `placement`'s
    mesh (default: one device). -> (params, router_bias, losses float [steps]) on the host.
    optimizer_config is a moe_jax.train.optimizer config; total_steps <= 0 follows `steps`.
    """
    if not records:
        raise ValueError("records: expected at least one training record, got none")
    if steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps}")
    placement = placement or Placement.one_device()
    if batch_size % placement.batch_shards:
        raise ConfigError("train.batch_size", batch_size,
                          f"a multiple of {placement.batch_shards} ({placement.describe()})")
    opt_config = optimizer_config.copy_and_resolve_references()
    if opt_config.total_steps <= 0:
        opt_config.total_steps = steps
    optimizer = make_optimizer(opt_config)
    model = Transformer.from_config(model_config)
    init = lambda rng: create_train_state(model, optimizer, rng, seq_len)  # noqa: E731
    _, shardings = placement.state_shardings(model, init, seq_len)
    # Fresh arrays on the mesh: the step donates its state, and callers keep their weights.
    params = placement.put(params, shardings.params)
    state = TrainState(step=placement.put(np.int32(0), shardings.step), params=params,
                       opt_state=placement.run(jax.jit(optimizer.init, out_shardings=shardings.opt_state),
                                               params),
                       router_bias=placement.put(router_bias, shardings.router_bias))
    # One reader thread: on a small shared CPU grain's default 16 threads only contend.
    batches = iter(train_dataset(records, tokenizer, global_batch_size=batch_size,
                                 seq_len=seq_len, seed=seed,
                                 read_options=grain.ReadOptions(num_threads=0)))
    step = make_train_step(model, optimizer, LossWeights.from_config(model_config),
                           model_config.bias_update_rate)
    batch_sharding = placement.batch_sharding(2, batch_size)
    step_fn = placement.jit(step, (shardings, batch_sharding, None), (shardings, None), donate_argnums=0)
    losses = []

    def on_report(done, scalars):
        losses.append(scalars["loss"])
        if log and (done % max(steps // 5, 1) == 0 or done == steps):
            log(f"  step {done}/{steps}: loss {np.mean(losses[-10:]):.3f}")

    trainer = Trainer(None, LoopSettings(steps=steps, log_every=steps, progress_bar=False), placement,
                      log=log or (lambda *_: None), name="fine-tuning ")
    state = trainer.run(state, next_batch=lambda i, s: placement.shard_batch(next(batches), process_local=False),
                        update=lambda s, batch, i: step_fn(s, batch, None), on_report=on_report)
    host = replicate_to_host({"params": state.params, "router_bias": state.router_bias})
    return host["params"], host["router_bias"], np.asarray(losses, np.float32)

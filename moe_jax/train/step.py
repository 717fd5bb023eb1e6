"""The pure training step: train_step(state, batch, rng) -> (state, metrics).

Jit it with the state donated. The balancing biases are updated after the gradient step
from the expert loads of this batch, by `update_router_biases`: a rule, not a gradient.
"""

from __future__ import annotations

import jax
import optax

from moe_jax.moe.router import BIAS_COLLECTION, LOAD_COLLECTION, update_router_biases
from moe_jax.train.losses import LossWeights, model_loss
from moe_jax.train.state import TrainState


def forward_with_loss(model, params, router_bias, batch, weights: LossWeights):
    """-> (loss, (metrics, expert loads per router))."""
    variables = {"params": params, BIAS_COLLECTION: router_bias}
    (logits, extras), mutated = model.apply(
        variables, batch["inputs"], batch["positions"], batch["segment_ids"],
        mutable=[LOAD_COLLECTION])
    loss, metrics = model_loss(logits, extras, batch, weights)
    return loss, (metrics, mutated.get(LOAD_COLLECTION, {}))


def stacked_router_bias(router_bias):
    """All routers' biases as one [layers, E] array (main MoE layers first, then MTP)."""
    leaves = jax.tree.leaves(router_bias)
    return jax.numpy.concatenate([b.reshape(-1, b.shape[-1]) for b in leaves])


def make_train_step(model, optimizer: optax.GradientTransformation, weights: LossWeights,
                    bias_update_rate: float):
    """Build the step for `model`: the objective's terms weighted by `weights`; the router
    biases move by `bias_update_rate` (gamma) per step, 0 keeps them frozen."""
    rate = bias_update_rate

    def train_step(state: TrainState, batch, rng):
        del rng  # no dropout in these models; kept in the signature for experiments that need it
        grad_fn = jax.value_and_grad(forward_with_loss, argnums=1, has_aux=True)
        (loss, (metrics, loads)), grads = grad_fn(model, state.params, state.router_bias, batch, weights)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        router_bias = update_router_biases(state.router_bias, loads, rate) if loads else state.router_bias
        metrics = dict(metrics, grad_norm=optax.global_norm(grads))
        if router_bias:
            metrics["routing/bias"] = stacked_router_bias(router_bias)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  router_bias=router_bias)
        return new_state, metrics

    return train_step

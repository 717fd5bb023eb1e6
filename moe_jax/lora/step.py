"""LoRA training: the step differentiates the training loss with respect to the
adapters only; the frozen base is an argument the step reads and never returns.

    state = create_lora_state(adapters, optimizer, router_bias)   # TrainState, params = adapters
    step = jax.jit(make_lora_train_step(model, optimizer, lora_config, LossWeights.from_config(m)),
                   donate_argnums=0)
    state, metrics = step(state, base, batch, rng)

The loss is `moe_jax.train.step.forward_with_loss` on the attached params, so the
objective (cross-entropy, MTP, routing losses) is the pretraining one. The optimizer
state holds moments for the adapters only. Router balancing biases stay frozen by
default (rate 0): they belong to the base model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from moe_jax.lora.adapters import attach
from moe_jax.moe.router import update_router_biases
from moe_jax.train.losses import LossWeights
from moe_jax.train.state import TrainState
from moe_jax.train.step import forward_with_loss, stacked_router_bias


def create_lora_state(adapters, optimizer: optax.GradientTransformation, router_bias) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=adapters,
                      opt_state=optimizer.init(adapters), router_bias=router_bias)


def lora_loss(model, adapters, base, router_bias, batch, lora_config, weights: LossWeights):
    """forward_with_loss on base + adapters: (loss, (metrics, expert loads))."""
    return forward_with_loss(model, attach(base, adapters, lora_config), router_bias, batch, weights)


def make_lora_train_step(model, optimizer: optax.GradientTransformation, lora_config,
                         weights: LossWeights, bias_update_rate: float = 0.0):
    """train_step(state, base, batch, rng) -> (state, metrics); state.params = adapters."""

    def train_step(state: TrainState, base, batch, rng):
        del rng
        grad_fn = jax.value_and_grad(lora_loss, argnums=1, has_aux=True)
        (loss, (metrics, loads)), grads = grad_fn(model, state.params, base, state.router_bias,
                                                  batch, lora_config, weights)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        adapters = optax.apply_updates(state.params, updates)
        router_bias = state.router_bias
        if loads and bias_update_rate:
            router_bias = update_router_biases(router_bias, loads, bias_update_rate)
        metrics = dict(metrics, grad_norm=optax.global_norm(grads))
        if router_bias:
            metrics["routing/bias"] = stacked_router_bias(router_bias)
        return state.replace(step=state.step + 1, params=adapters, opt_state=opt_state,
                             router_bias=router_bias), metrics

    return train_step

"""The DP-SGD training step: per-example gradients, clipped and noised by optax.

    optimizer = dp_optimizer(make_optimizer(c), settings, seed)   # DP aggregation first
    step = make_dp_train_step(model, optimizer, LossWeights.from_config(m))
    state, metrics = step(state, batch, rng)                       # as make_train_step's

Per-example gradients are `jax.vmap` over the B rows of the batch of the same loss the
plain step differentiates, each row run as a batch of one ([1, T]): so every term of
the objective, routing included, is a function of that example alone. That matters for
an MoE: a capacity dispatch drops tokens by what else is in the batch, and the
expert-level balance loss (V2's aux loss) reads the whole batch's loads; per example,
the capacity is the example's own and the balance loss is the example's own balance
(a stricter regulariser than the batch's), so no example's gradient depends on another.
The sequence-wise balance loss (V3) is per sequence already.

optax's `differentially_private_aggregate` then clips each example's gradient to
`clip_norm` (global L2 over every parameter), sums, adds N(0, (sigma C)^2) noise and
divides by B; the rest of the optimizer chain (clipping, AdamW) sees that average and
is post-processing, which costs no privacy. Its noise key lives in the optimizer state
as raw uint32 words (checkpointed and resumed like any array), so a resumed run adds
the same noise an uninterrupted one would.

The router's balancing bias is not updated (see moe_jax.train.privacy): it would
publish the batch's expert loads without noise. The memory price: the B per-example
gradients exist at once, B copies of every parameter, routed experts included (an
example touches K of E experts, but its gradient has the shape of all of them);
benchmarks/dp_clipping.py measures it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import contrib

from moe_jax.train.losses import LossWeights
from moe_jax.train.privacy import PrivacySettings
from moe_jax.train.state import TrainState
from moe_jax.train.step import forward_with_loss, stacked_router_bias


class NoiseKeyState(NamedTuple):
    key: jax.Array  # uint32 [2]: the raw words of the noise's PRNG key


def dp_aggregate(clip_norm: float, noise_multiplier: float, seed: int) -> optax.GradientTransformation:
    """optax's DP-SGD aggregation (per-example clip, sum, Gaussian noise, mean) with its
    key kept as raw words in the state: a plain array every checkpointer reads."""
    inner = contrib.differentially_private_aggregate(clip_norm, noise_multiplier,
                                                     key=jax.random.key(seed))

    def init(params):
        return NoiseKeyState(jax.random.key_data(inner.init(params).rng_key))

    def update(updates, state, params=None):
        wrapped = contrib.DifferentiallyPrivateAggregateState(rng_key=jax.random.wrap_key_data(state.key))
        updates, new = inner.update(updates, wrapped, params)
        return updates, NoiseKeyState(jax.random.key_data(new.rng_key))

    return optax.GradientTransformation(init, update)


def dp_optimizer(optimizer: optax.GradientTransformation, settings: PrivacySettings,
                 seed: int) -> optax.GradientTransformation:
    """The DP aggregation in front of `optimizer` (which then sees the noised mean)."""
    return optax.chain(dp_aggregate(settings.clip_norm, settings.noise_multiplier, seed), optimizer)


def per_example_grads(model, weights: LossWeights, params, router_bias, batch):
    """Batch fields [B, T] -> (losses [B], metrics with a leading [B], grads with a
    leading [B] on every parameter): each row differentiated as a batch of one."""
    def one(params, example):
        single = jax.tree.map(lambda x: x[None], example)
        loss, (metrics, _) = forward_with_loss(model, params, router_bias, single, weights)
        return loss, metrics

    grad_fn = jax.vmap(jax.value_and_grad(one, has_aux=True), in_axes=(None, 0))
    (losses, metrics), grads = grad_fn(params, batch)
    return losses, metrics, grads


def make_dp_train_step(model, optimizer: optax.GradientTransformation, weights: LossWeights,
                       clip_norm: float):
    """The DP-SGD step for `model`; `optimizer` must begin with the DP aggregation
    (`dp_optimizer`). clip_norm: only for the logged share of clipped examples."""

    def train_step(state: TrainState, batch, rng):
        del rng  # the noise key is the optimizer state's
        losses, per_example, grads = per_example_grads(model, weights, state.params, state.router_bias, batch)
        norms = jax.vmap(optax.global_norm)(grads)  # [B]
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Per-example metrics averaged over the batch (per-layer routing arrays too).
        metrics = {k: jnp.mean(v, axis=0) for k, v in per_example.items()}
        metrics.update(loss=jnp.mean(losses), grad_norm=jnp.mean(norms),
                       clipped_fraction=jnp.mean((norms > clip_norm).astype(jnp.float32)))
        if state.router_bias:
            metrics["routing/bias"] = stacked_router_bias(state.router_bias)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step

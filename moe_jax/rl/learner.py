"""The GRPO update: grpo_step(state, batch) -> (state, metrics), jitted with state donated.

batch (numpy or jax arrays, B = prompts x G outputs, L = prompt + response columns):
    tokens, positions, segment_ids   int32 [B, L]        see moe_jax.rl.policy
    response_mask                    float32 [B, L-1]     columns scored by the loss
    old_logprobs                     float32 [B, L-1]     pi_old, from `make_scorer`
    ref_logprobs                     float32 [B, L-1]     pi_ref (needed when beta > 0)
    advantages                       float32 [B]          group-normalised rewards

The routing biases are left as they are during RL: moving them between sampling and the
update would change which experts a token uses, and the ratio pi_theta / pi_old would
then measure re-routing rather than learning. Expert loads are still reported.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from moe_jax.rl.grpo import GRPOConfig, grpo_loss
from moe_jax.rl.policy import sequence_logprobs
from moe_jax.train.state import TrainState


def _max_load_ratio(loads):
    """Mean over routers of max expert load / mean load (1.0 = perfectly balanced)."""
    ratios = []
    for load in jax.tree.leaves(loads):
        load = load.reshape(-1, load.shape[-1])  # [layers, E] token counts or fractions
        fractions = load / jnp.maximum(load.sum(axis=-1, keepdims=True), 1e-9)
        ratios.append((fractions.max(axis=-1) * load.shape[-1]).mean())
    return jnp.mean(jnp.stack(ratios)) if ratios else jnp.float32(1.0)


def make_grpo_step(model, optimizer: optax.GradientTransformation, config: GRPOConfig):
    """`model` must be the scoring model (moe_jax.rl.policy.scoring_model)."""

    def loss_fn(params, router_bias, batch):
        logp, loads = sequence_logprobs(model, params, router_bias, batch)
        loss, metrics = grpo_loss(logp, batch["old_logprobs"], batch.get("ref_logprobs"),
                                  batch["advantages"], batch["response_mask"], config)
        return loss, dict(metrics, max_load_ratio=_max_load_ratio(loads))

    def grpo_step(state: TrainState, batch):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, metrics), grads = grad_fn(state.params, state.router_bias, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return grpo_step

"""The GRPO update: grpo_step(state, batch) -> (state, metrics), jitted with state donated.

batch (numpy or jax arrays, B = prompts x G outputs, L = prompt + response columns):
    tokens, positions, segment_ids   int32 [B, L]        see moe_jax.rl.policy
    response_mask                    float32 [B, L-1]     columns scored by the loss
    old_logprobs                     float32 [B, L-1]     pi_old, from `make_scorer`
    ref_logprobs                     float32 [B, L-1]     pi_ref (needed when beta > 0)
    advantages                       float32 [B]          group-normalised rewards
    expert_index                     int32 [B, L, M, K]   the sampler's experts (MoE models)

By default the routing biases are left as they are during RL: moving them between
sampling and the update changes which experts a token uses, and the ratio pi_theta /
pi_old then measures re-routing rather than learning. `bias_update_rate` > 0 moves them
as pretraining does (rl.update_router_bias), from the update's expert loads. With
`replay` the forward runs the rollout's experts (rl.routing_replay). Either way the
router's health (moe_jax.rl.router_health) is reported per layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from moe_jax.moe.router import update_router_biases
from moe_jax.rl.grpo import GRPOConfig, grpo_loss
from moe_jax.rl.policy import sequence_logprobs
from moe_jax.rl.router_health import router_health
from moe_jax.train.state import TrainState
from moe_jax.train.step import stacked_router_bias


def _max_load_ratio(loads):
    """Mean over routers of max expert load / mean load (1.0 = perfectly balanced)."""
    ratios = []
    for load in jax.tree.leaves(loads):
        load = load.reshape(-1, load.shape[-1])  # [layers, E] token counts or fractions
        fractions = load / jnp.maximum(load.sum(axis=-1, keepdims=True), 1e-9)
        ratios.append((fractions.max(axis=-1) * load.shape[-1]).mean())
    return jnp.mean(jnp.stack(ratios)) if ratios else jnp.float32(1.0)


def make_grpo_step(model, optimizer: optax.GradientTransformation, config: GRPOConfig, *,
                   replay: bool = False, bias_update_rate: float = 0.0):
    """`model` must be the scoring model (moe_jax.rl.policy.scoring_model). replay: run
    the batch's expert_index instead of routing; bias_update_rate: gamma of the router
    bias update after each step (0: the biases stay frozen)."""

    def loss_fn(params, router_bias, batch):
        logp, loads, moe_stats = sequence_logprobs(model, params, router_bias, batch, replay)
        loss, metrics = grpo_loss(logp, batch["old_logprobs"], batch.get("ref_logprobs"),
                                  batch["advantages"], batch["response_mask"], config)
        metrics = dict(metrics, max_load_ratio=_max_load_ratio(loads))
        if "expert_index" in batch and moe_stats:
            real = batch["segment_ids"][:, :-1] > 0
            metrics.update(router_health(moe_stats, batch["expert_index"][:, :-1], real,
                                         model.config.layer.moe.num_experts))
        return loss, (metrics, loads)

    def grpo_step(state: TrainState, batch):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (metrics, loads)), grads = grad_fn(state.params, state.router_bias, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        router_bias = state.router_bias
        if bias_update_rate and loads:
            # The scoring model has no MTP modules: their routers' biases stay as they are.
            moved = update_router_biases({k: router_bias[k] for k in loads}, loads, bias_update_rate)
            router_bias = {**router_bias, **moved}
        metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
        if jax.tree.leaves(router_bias):
            metrics["routing/bias"] = stacked_router_bias(router_bias)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             router_bias=router_bias), metrics

    return grpo_step

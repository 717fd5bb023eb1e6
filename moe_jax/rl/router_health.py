"""Router health during RL on a sparse MoE: did the update run the rollout's experts?

Between sampling and the policy update the parameters move (every minibatch after the
first sees a policy one or more optimizer steps on), and the sampler's cached decoding
and the learner's full forward round differently. Either can flip a token's top-k
experts, and then pi_theta / pi_old compares two different sub-networks: the ratio
measures re-routing, not learning. These per-layer figures say how often that happens:

    changed              real tokens whose expert set in the update differs from the
                         rollout's (0 under routing replay, which runs the rollout's)
    recomputed_changed   the same for the experts the update's router would choose itself
                         (equal to `changed` without replay; under replay, the drift that
                         replay hides)
    entropy              mean routing entropy (nats) of the gate scores, normalised per token
    max_over_mean_load   max expert load / mean load over the real tokens (1 = balanced)

Shapes: M main MoE layers, B rows, T columns, K experts per token, E experts.
"""

from __future__ import annotations

import jax.numpy as jnp

from moe_jax.moe.router import same_expert_sets


def router_health(moe_stats, rollout_experts, real, num_experts: int) -> dict:
    """Per-layer arrays ("routing/<name>" [M]) and their means over layers (scalars).

    moe_stats: the scoring forward's routing statistics (expert_index and preferred_index
    [M, B, T, K], routing_entropy [M, B, T]); rollout_experts: int [B, T, M, K], the
    sampler's; real: [B, T], the tokens to count (padding excluded).
    """
    rollout = jnp.moveaxis(rollout_experts, 2, 0)  # [M, B, T, K]
    real = real.astype(jnp.float32)[None]  # [1, B, T]
    count = jnp.maximum(real.sum(axis=(1, 2)), 1.0)  # [1]

    def per_layer_mean(x):  # [M, B, T] -> [M], over the real tokens
        return (x * real).sum(axis=(1, 2)) / count

    used = moe_stats["expert_index"]
    one_hot = (used[..., None] == jnp.arange(num_experts)).any(axis=-2)  # [M, B, T, E]
    load = (one_hot * real[..., None]).sum(axis=(1, 2))  # [M, E] tokens per expert
    arrays = {
        "changed": per_layer_mean(~same_expert_sets(used, rollout)),
        "recomputed_changed": per_layer_mean(~same_expert_sets(moe_stats["preferred_index"], rollout)),
        "entropy": per_layer_mean(moe_stats["routing_entropy"]),
        "max_over_mean_load": load.max(axis=-1) / jnp.maximum(load.mean(axis=-1), 1e-9),
    }
    out = {f"routing/{k}": v for k, v in arrays.items()}
    out.update({"expert_changed": arrays["changed"].mean(),
                "expert_recomputed_changed": arrays["recomputed_changed"].mean(),
                "routing_entropy": arrays["entropy"].mean()})
    return out

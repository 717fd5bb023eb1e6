"""Top-k expert routing: gates, group-limited selection, balance losses, bias updates.

Shapes: S tokens, E experts, K experts per token, G expert groups, B sequences, T length.

Three gates, picked by `model.router`:
- "softmax": s = softmax(logits) (DeepSeek-V2); combine weights are the top-k s,
  optionally renormalised (`norm_topk_prob`).
- "sigmoid": s = sigmoid(logits), top-k weights renormalised (DeepSeek-V3 without bias).
- "sigmoid_bias": as "sigmoid", but *selection* uses s + b where b is a per-expert bias
  that is not learned by gradient; the combine weights use s alone (DeepSeek-V3's
  auxiliary-loss-free balancing). `update_bias` moves b towards a balanced load.

Group-limited routing (`n_group` > 1) first keeps the `topk_group` best groups, scoring
a group by its best expert ("max", DeepSeek-V2 device-limited routing) or by the sum of
its two best experts ("top2_sum", DeepSeek-V3), then picks top-k inside them.

Routing replay (reinforcement learning on a sparse model): `route` can be handed the
experts to use ([S, K], chosen earlier, e.g. by the sampler that produced a rollout).
Selection is then skipped, and only the combine weights come from the current scores
of those experts, so a policy update sees the experts the rollout used while the router
still learns through the weights.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_jax.layers.initializers import dense_init

BIAS_COLLECTION = "router_bias"
# Per-step expert loads, written beside each bias (same module path) so that the train
# step can update every layer's bias with one tree map; see `update_router_biases`.
LOAD_COLLECTION = "router_load"


@dataclasses.dataclass(frozen=True)
class RouterConfig:
    """What routing reads from the model config (`gate` is `model.router`)."""

    d_model: int  # D
    num_experts: int  # E
    top_k: int  # K
    gate: str = "sigmoid_bias"  # "softmax" | "sigmoid" | "sigmoid_bias"
    n_group: int = 1  # G; > 1 limits each token to the `topk_group` best groups
    topk_group: int = 1
    group_score: str = "top2_sum"  # "max" (V2) | "top2_sum" (V3)
    norm_topk_prob: bool = True
    routed_scaling: float = 1.0
    init_std: float = 0.02

    @classmethod
    def from_config(cls, m) -> "RouterConfig":
        return cls(d_model=m.d_model, num_experts=m.num_experts, top_k=m.top_k, gate=m.router,
                   n_group=m.n_group, topk_group=m.topk_group, group_score=m.group_score,
                   norm_topk_prob=m.norm_topk_prob, routed_scaling=m.routed_scaling,
                   init_std=m.init_std)


class Routing(NamedTuple):
    expert_index: jax.Array  # [S, K] int32, chosen experts per token
    combine_weights: jax.Array  # [S, K] float32, weights applied to expert outputs
    scores: jax.Array  # [S, E] float32, gate scores (before bias) used by balance losses
    # [S, K] int32 under routing replay: the experts the router itself would have chosen
    # (None when it chose expert_index itself).
    preferred_index: jax.Array | None = None


def gate_scores(logits, router: str):
    """[S, E] logits -> [S, E] float32 scores for the named gate."""
    logits = logits.astype(jnp.float32)
    if router == "softmax":
        return jax.nn.softmax(logits, axis=-1)
    if router in ("sigmoid", "sigmoid_bias"):
        return jax.nn.sigmoid(logits)
    raise ValueError(f"model.router = {router!r}: expected 'softmax', 'sigmoid' or 'sigmoid_bias'")


def limit_to_groups(selection_scores, n_group: int, topk_group: int, group_score: str):
    """Mask experts outside the `topk_group` best groups with -inf.

    selection_scores: [S, E] -> [S, E]. Experts are grouped contiguously: group g holds
    experts [g*E/G, (g+1)*E/G).
    """
    num_tokens, num_experts = selection_scores.shape
    grouped = selection_scores.reshape(num_tokens, n_group, num_experts // n_group)  # [S, G, E/G]
    if group_score == "max":
        per_group = grouped.max(axis=-1)
    elif group_score == "top2_sum":
        per_group = jax.lax.top_k(grouped, 2)[0].sum(axis=-1)
    else:
        raise ValueError(f"model.group_score = {group_score!r}: expected 'max' or 'top2_sum'")
    _, best_groups = jax.lax.top_k(per_group, topk_group)  # [S, topk_group]
    keep = jnp.zeros((num_tokens, n_group), bool).at[jnp.arange(num_tokens)[:, None], best_groups].set(True)
    keep = jnp.repeat(keep, num_experts // n_group, axis=1)  # [S, E]
    return jnp.where(keep, selection_scores, -jnp.inf)


def route(logits, m: RouterConfig, bias=None, expert_index=None) -> Routing:
    """Choose K experts per token. logits: [S, E]; bias: [E] (sigmoid_bias only).

    expert_index: int [S, K] experts to use instead of choosing (routing replay); the
    combine weights are then the current scores of those experts, normalised as usual.
    """
    scores = gate_scores(logits, m.gate)
    chosen = _select(scores, m, bias)
    if expert_index is None:
        return _combine(scores, chosen, m)
    # Replay: the given experts run; the router's own choice is kept to measure drift.
    return _combine(scores, jnp.asarray(expert_index, jnp.int32), m)._replace(preferred_index=chosen)


def _select(scores, m: RouterConfig, bias):
    """[S, E] scores -> [S, K] int32 experts: top-k of scores (+ bias), within the best groups."""
    selection = scores
    if m.gate == "sigmoid_bias":
        if bias is None:
            raise ValueError("model.router = 'sigmoid_bias' needs the router bias")
        # The bias only decides *which* experts are chosen; it never enters the weights,
        # and no gradient flows through the choice.
        selection = scores + jax.lax.stop_gradient(bias.astype(jnp.float32))
    if m.n_group > 1:
        selection = limit_to_groups(selection, m.n_group, m.topk_group, m.group_score)
    _, expert_index = jax.lax.top_k(selection, m.top_k)  # [S, K]
    return expert_index.astype(jnp.int32)


def _combine(scores, expert_index, m: RouterConfig) -> Routing:
    """The combine weights of the chosen experts: their scores, renormalised and scaled."""
    weights = jnp.take_along_axis(scores, expert_index, axis=-1)  # [S, K]
    if m.norm_topk_prob and m.top_k > 1:
        weights = weights / (weights.sum(axis=-1, keepdims=True) + 1e-20)
    weights = weights * m.routed_scaling
    return Routing(expert_index, weights, scores)


def routing_entropy(scores):
    """[S, E] gate scores -> [S] entropy (nats) of each token's scores normalised to sum
    to 1: log E for a router that cannot tell experts apart, 0 for a one-expert router."""
    p = scores / (scores.sum(axis=-1, keepdims=True) + 1e-20)
    return -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-20)), axis=-1)


def same_expert_sets(a, b):
    """[..., K] and [..., K] expert indices -> bool [...]: the same K experts, in any order
    (the order of top-k among near-equal scores says nothing about which experts ran)."""
    return jnp.all(jnp.sort(a, axis=-1) == jnp.sort(b, axis=-1), axis=-1)


def expert_counts(expert_index, num_experts: int):
    """[S, K] -> [E] float32: how many (token, slot) assignments each expert received."""
    return jnp.zeros((num_experts,), jnp.float32).at[expert_index.reshape(-1)].add(1.0)


def balance_loss(scores, expert_index, top_k: int):
    """Expert-level balance loss of DeepSeek-V2: sum_i f_i * P_i.

    f_i = E / (K * S) * (tokens choosing i); P_i = mean over tokens of s_{i,t}.
    A perfectly uniform router gives exactly 1. Multiply by the coefficient alpha.
    """
    num_tokens, num_experts = scores.shape
    f = expert_counts(expert_index, num_experts) * num_experts / (top_k * num_tokens)
    p = scores.mean(axis=0)
    return jnp.sum(f * p)


def sequence_balance_loss(scores, expert_index, top_k: int, batch: int):
    """DeepSeek-V3's sequence-wise balance loss: the balance loss inside each sequence,
    with scores normalised per token (s'_{i,t} = s_{i,t} / sum_j s_{j,t}), averaged over
    the B sequences. scores: [B*T, E]; expert_index: [B*T, K].
    """
    num_experts = scores.shape[-1]
    seq_scores = scores.reshape(batch, -1, num_experts)
    seq_scores = seq_scores / (seq_scores.sum(axis=-1, keepdims=True) + 1e-20)
    seq_index = expert_index.reshape(batch, -1, top_k)
    per_seq = jax.vmap(balance_loss, in_axes=(0, 0, None))(seq_scores, seq_index, top_k)
    return per_seq.mean()


def router_z_loss(logits):
    """mean over tokens of logsumexp(logits)^2 (ST-MoE): keeps router logits small."""
    return jnp.mean(jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1) ** 2)


def update_bias(bias, load, rate):
    """b_i <- b_i + gamma * sign(mean(load) - load_i).

    A pure function applied to the `router_bias` collection after each step, outside
    the gradient. Overloaded experts are made less attractive, idle ones more. `load`
    may carry leading axes (layers); the mean is taken over the expert axis.
    """
    load = load.astype(jnp.float32)
    error = load.mean(axis=-1, keepdims=True) - load
    return bias + rate * jnp.sign(error).astype(bias.dtype)


def update_router_biases(biases, loads, rate):
    """Apply `update_bias` to every layer: `biases` is the model's router_bias collection
    and `loads` the router_load collection returned by `apply(..., mutable=[LOAD_COLLECTION])`;
    both trees have one leaf per router, under the same path."""
    return jax.tree.map(lambda b, load: update_bias(b, load, rate), biases, loads)


def load_imbalance(load):
    """max(load) / mean(load) over the expert axis: 1 is perfectly balanced."""
    return load.max(axis=-1) / jnp.maximum(load.mean(axis=-1), 1e-9)


class Router(nn.Module):
    """Gate projection [D, E] plus, for sigmoid_bias, the balancing bias [E]."""

    config: RouterConfig
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, expert_index=None) -> tuple[Routing, jax.Array]:
        """x: [S, D] -> (Routing, logits [S, E]). Logits are computed in float32.

        expert_index: int [S, K] experts to replay instead of choosing (see `route`)."""
        m = self.config
        w = self.param("gate", dense_init(m.init_std, ("embed", "expert")),
                       (m.d_model, m.num_experts), self.param_dtype)
        logits = jnp.dot(x.astype(jnp.float32), w.astype(jnp.float32))  # [S, E]
        bias = None
        if m.gate == "sigmoid_bias":
            bias = self.variable(BIAS_COLLECTION, "bias",
                                 lambda: jnp.zeros((m.num_experts,), jnp.float32)).value
        routing = route(logits, m, bias, expert_index)
        if bias is not None and self.is_mutable_collection(LOAD_COLLECTION):
            # Stored under the bias's own name so both collections share one tree structure.
            self.put_variable(LOAD_COLLECTION, "bias", expert_counts(routing.expert_index, m.num_experts))
        return routing, logits

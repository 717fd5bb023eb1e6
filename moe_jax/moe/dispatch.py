"""Dispatch engines: send each token to its K experts and combine the results.

Pure functions, no modules and no sharding. Every engine has the signature

    engine(x [S, D], expert_index [S, K], combine_weights [S, K], experts: ExpertWeights,
           capacity_factor: float, *, fp8: bool = False) -> (y [S, D], num_dropped: int32 scalar)

where `num_dropped` counts (token, expert) assignments that were not computed and `fp8`
runs the expert GEMMs in FP8 (moe_jax.layers.fp8). Shapes:
S tokens, D model, E experts, F expert ffn, K experts per token, C capacity per expert,
N = S * K assignments.

- `reference`: a Python loop over experts that runs every token through every expert
  and masks the result. Obviously correct, E times the work: the yardstick for tests.
- `capacity`: each expert takes C = ceil(N / E * capacity_factor) assignments, first
  choices of every token before second choices; the rest are dropped. The kept ones run
  through the `dropless` kernels, so no one-hot einsum and no [E, C] padding.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from moe_jax.layers.mlp import swiglu
from moe_jax.moe.dropless import dropless, stable_sort_by_expert


class ExpertWeights(NamedTuple):
    gate: jax.Array  # [E, D, F]
    up: jax.Array  # [E, D, F]
    down: jax.Array  # [E, F, D]


def reference(x, expert_index, combine_weights, experts: ExpertWeights, capacity_factor=None, *,
              fp8: bool = False):
    """Loop over experts; every token through every expert, masked by its routing weight."""
    del capacity_factor
    num_experts = experts.gate.shape[0]
    y = jnp.zeros(x.shape, jnp.float32)
    for e in range(num_experts):
        weight = jnp.sum(jnp.where(expert_index == e, combine_weights, 0.0), axis=-1)  # [S]
        out = swiglu(x, experts.gate[e], experts.up[e], experts.down[e], fp8=fp8)  # [S, D]
        y = y + weight[:, None] * out.astype(jnp.float32)
    return y.astype(x.dtype), jnp.zeros((), jnp.int32)


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    return max(1, math.ceil(num_tokens * top_k / num_experts * capacity_factor))


def rank_within_expert(flat_expert, num_experts: int):
    """For each assignment, how many earlier assignments chose the same expert.

    flat_expert: [N] -> (rank [N] int32, group_sizes [E] int32). Uses a stable sort, so
    the cost is N log N whatever E is.
    """
    n = flat_expert.shape[0]
    order, sorted_expert = stable_sort_by_expert(flat_expert.astype(jnp.int32), num_experts)
    group_sizes = jnp.bincount(flat_expert, length=num_experts).astype(jnp.int32)
    group_starts = jnp.cumsum(group_sizes) - group_sizes
    rank_sorted = jnp.arange(n, dtype=jnp.int32) - group_starts[sorted_expert]
    rank = jnp.zeros((n,), jnp.int32).at[order].set(rank_sorted)
    return rank, group_sizes


def capacity(x, expert_index, combine_weights, experts: ExpertWeights, capacity_factor=1.25, *,
             fp8: bool = False):
    """Capacity-limited dispatch: decide which assignments fit, run only those.

    Each expert keeps its first C assignments, first choices of every token before second
    choices; the kept ones run through the dropless engine's grouped matmul, and the
    dropped ones get no buffer row at all. So capacity costs at most what dropless costs:
    padding every expert to C rows ([E, C, D] buffers and batched einsums) would cost
    1.6x a dense MLP of the same active FLOPs at factor 1.25 on CPU before any dispatch.
    """
    num_tokens = x.shape[0]
    top_k = expert_index.shape[1]
    num_experts = experts.gate.shape[0]
    cap = expert_capacity(num_tokens, top_k, num_experts, capacity_factor)

    # k-major order: every token's first choice claims a slot before any second choice.
    rank, _ = rank_within_expert(expert_index.T.reshape(-1), num_experts)
    kept = (rank < cap).reshape(top_k, num_tokens).T  # [S, K]
    routed = jnp.where(kept, expert_index, num_experts)  # num_experts: no row (dropless.sort_by_expert)
    y, _ = dropless(x, routed, combine_weights, experts, fp8=fp8)
    return y, jnp.sum(~kept).astype(jnp.int32)


ENGINES: dict[str, Callable] = {
    "reference": reference,
    "capacity": capacity,
    "dropless": dropless,
}


def get_engine(name: str) -> Callable:
    if name not in ENGINES:
        raise ValueError(f"model.dispatch = {name!r}: expected one of {sorted(ENGINES)}")
    return ENGINES[name]
